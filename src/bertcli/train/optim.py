"""Optimisers: parameter groups (no weight decay on biases and LayerNorm), AdamW (fused on
CUDA and CPU), LAMB as apex's FusedLAMB (with `torch._foreach_*`) and Novograd in plain PyTorch."""

from __future__ import annotations

import torch
from torch import nn

from bertcli.config import OPTIMIZERS  # noqa: F401 (the names, kept with the configs)


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
    """LAMB (You et al. 2019) as NVIDIA apex's `FusedLAMB` computes it (DeepLearningExamples' BERT).

    Per group, with the global gradient norm `n` over all groups and `c = n / max_grad_norm`
    when `n > max_grad_norm` (else 1): `g = grad / c`; Adam moments with bias correction;
    `u = m_hat / (sqrt(v_hat) + eps) + wd * w`; then `w -= lr * r * u`, where the trust ratio
    `r = ||w|| / ||u||` (1 if either norm is 0) applies only where the group's `weight_decay` is
    non-zero. Groups with weight decay 0 (biases, LayerNorm) get neither decay nor trust ratio:
    apex's `use_nvlamb=False`, its default and DLE's. `max_grad_norm=0` turns the clipping off;
    `build_optimizer` does, because the trainer already clips with `clip_grad_norm_` first.
    Updates run as `torch._foreach_*` over each group's tensors, not a per-tensor Python loop.
    """

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_grad_norm=0.0
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        all_grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not all_grads:
            return loss
        clip = None
        if self.max_grad_norm > 0:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(all_grads)))
            clip = torch.clamp(norm / self.max_grad_norm, min=1.0)  # stays on the device
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
            # one Python-int step per group, as apex (no device sync for bias correction);
            # checkpoints written before kept it per parameter
            group["step"] = group.get("step", states[0].get("step", 0)) + 1
            step = group["step"]
            beta1, beta2 = group["betas"]
            wd, eps, lr = group["weight_decay"], group["eps"], group["lr"]
            grads = [p.grad for p in params]
            if clip is not None:
                grads = torch._foreach_div(grads, clip)
            exp_avg = [s["exp_avg"] for s in states]
            exp_avg_sq = [s["exp_avg_sq"] for s in states]
            torch._foreach_mul_(exp_avg, beta1)
            torch._foreach_add_(exp_avg, grads, alpha=1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            denom = torch._foreach_div(exp_avg_sq, 1 - beta2**step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            update = torch._foreach_div(exp_avg, 1 - beta1**step)
            torch._foreach_div_(update, denom)
            if wd != 0:
                w_norm = torch.stack(torch._foreach_norm(params))  # before the update, as apex
                torch._foreach_add_(update, params, alpha=wd)
                u_norm = torch.stack(torch._foreach_norm(update))
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                )
                torch._foreach_mul_(update, list(trust.unbind()))
            torch._foreach_add_(params, update, alpha=-lr)
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


# where torch has a fused AdamW kernel (CPU since torch 2.4; the floor is 2.6)
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device_type: str,
    eps: float = 1e-6,
) -> torch.optim.Optimizer:
    """The named optimiser over `parameter_groups(model)`; AdamW is fused on CUDA and CPU.

    `eps` is AdamW's and LAMB's epsilon; Novograd keeps NeMo's 1e-8 and SGD has none. Fused AdamW
    on the CPU (as transformers' Trainer uses, `adamw_torch_fused`) took 0.20x (mini) and 0.37x
    (small) the time of the foreach step, alternated in one process on the 2-core box, and its
    parameters stayed within 1.5e-8 of foreach's after 8 steps (tests/train/test_fused_adamw.py).
    """
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        fused = device_type in FUSED_ADAMW_DEVICES
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    if name == "novograd":
        return Novograd(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0])
    raise ValueError(f"unknown optimizer {name!r}")
