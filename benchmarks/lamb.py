"""What LAMB's `torch._foreach_*` step saves over a per-tensor Python loop, and what it costs
over AdamW.

    python benchmarks/lamb.py [--preset base] [--device cpu|cuda] [--steps 10] [--repeats 3]
                              [--threads 1] [--json benchmarks/results/lamb.json]

Three optimizer steps over the same BERT parameters and gradients, alternated (ours, loop, adamw,
ours, ...) so a busy machine slows all alike; the best of the repeats is reported, as `timeit`
does. `loop` is the same apex-FusedLAMB math one tensor at a time (the shape of the code before
the foreach rewrite); `adamw` is `torch.optim.AdamW(foreach=True)` on the same groups. Figures
are ratios: `loop_over_ours` > 1 means the foreach step is faster. On a shared CPU, `--threads 1`
keeps other jobs' load from swamping the intra-op thread pool (the figures are then per core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.optim import Lamb, parameter_groups


class LoopLamb(torch.optim.Optimizer):
    """The same update as `Lamb` (max_grad_norm off), one tensor at a time."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            group["step"] = group.get("step", 0) + 1
            t = group["step"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    w_norm = p.norm()
                    update.add_(p, alpha=group["weight_decay"])
                    u_norm = update.norm()
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update.mul_(trust)
                p.add_(update, alpha=-group["lr"])


def timed(optimizer: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Seconds for `steps` optimizer steps (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    """Run the comparison and print (and optionally write) the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {name: BertForPreTraining(BertConfig.from_preset(args.preset)).to(device)
              for name in ("ours", "loop", "adamw")}  # fmt: skip
    for model in models.values():
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
    optimizers = {
        "ours": Lamb(parameter_groups(models["ours"], 0.01), lr=1e-3),
        "loop": LoopLamb(parameter_groups(models["loop"], 0.01), lr=1e-3),
        "adamw": torch.optim.AdamW(parameter_groups(models["adamw"], 0.01), lr=1e-3, foreach=True),
    }
    for optimizer in optimizers.values():  # warm-up: state allocation, kernels
        timed(optimizer, 1, device)
    best = {name: float("inf") for name in optimizers}
    for _ in range(args.repeats):
        for name, optimizer in optimizers.items():
            best[name] = min(best[name], timed(optimizer, args.steps, device))
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "machine": platform.platform(),
        "parameters": sum(p.numel() for p in models["ours"].parameters()),
        "tensors": len(list(models["ours"].parameters())),
        "threads": torch.get_num_threads(),
        "seconds_per_step": {k: v / args.steps for k, v in best.items()},
        "loop_over_ours": best["loop"] / best["ours"],
        "ours_over_adamw": best["ours"] / best["adamw"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
