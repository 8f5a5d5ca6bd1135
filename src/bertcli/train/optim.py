"""Optimisers: parameter groups (no weight decay on biases and LayerNorm), AdamW (fused on
CUDA), and LAMB and Novograd written here in plain PyTorch."""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("adamw", "lamb", "novograd", "sgd")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm parameters do not."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, nn.LayerNorm) or name.endswith("bias") or param.ndim < 2:
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam's update rescaled per tensor by ||w|| / ||update||.

    Decoupled weight decay is part of the update before the trust ratio, as in the paper and
    NVIDIA's FusedLAMB; the trust ratio is 1 where either norm is zero.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a Python int: no device sync for bias correction
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1**step)
                v_hat = exp_avg_sq / (1 - beta2**step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                )
                p.add_(update * trust, alpha=-group["lr"])
        return loss


class Novograd(torch.optim.Optimizer):
    """NovoGrad (Ginsburg et al. 2019), NeMo's default: Adam with a per-tensor second moment.

    v_t = b2 v + (1 - b2) ||g||^2 (v_1 = ||g||^2); m_t = b1 m + (g / (sqrt(v_t) + eps) + wd w).
    """

    def __init__(self, params, lr=1e-3, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad_sq = p.grad.float().pow(2).sum()
                if not state:
                    state["exp_avg_sq"] = grad_sq.clone()
                    state["exp_avg"] = torch.zeros_like(p)
                else:
                    state["exp_avg_sq"].mul_(beta2).add_(grad_sq, alpha=1 - beta2)
                scaled = p.grad / (state["exp_avg_sq"].sqrt() + group["eps"])
                if group["weight_decay"]:
                    scaled.add_(p, alpha=group["weight_decay"])
                state["exp_avg"].mul_(beta1).add_(scaled)
                p.add_(state["exp_avg"], alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
) -> torch.optim.Optimizer:
    """The named optimiser over `parameter_groups(model)`; AdamW is fused on CUDA."""
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-6, fused=device_type == "cuda")
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=1e-6)
    if name == "novograd":
        return Novograd(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0])
    raise ValueError(f"unknown optimizer {name!r}")
