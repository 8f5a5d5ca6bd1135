"""fp32 linear layers on the CPU through oneDNN where it beats the BLAS torch multiplies with.

Why: torch's x86 CPU build multiplies fp32 matrices with MKL. On AMD CPUs MKL's sgemm runs far
below the hardware: on the 2-core AMD EPYC (Zen 5) this project is measured on, a
(4096 x 256) @ (256 x 1024) product ran at 53 GFLOP/s on one core, where oneDNN (also in every
x86 torch build, and what torch already uses for bf16) ran it at 131, in IEEE fp32 both (the
results agree to ~1e-6 relative, as any two summation orders do). Linear layers are two thirds
of a BERT step on the CPU, so this is the largest CPU lever there is. On CPUs where MKL is as
fast, nothing changes: `choose` measures both on this machine and keeps torch's own path unless
oneDNN is clearly faster.

`linear` is what the model's `Linear` layers call. It takes the oneDNN path only when `choose`
(called by the commands at start-up on the CPU) picked it, for fp32 CPU tensors outside autocast
and torch.compile; everything else is `torch.nn.functional.linear`. `BERTCLI_CPU_GEMM` = `auto`
(default), `onednn` or `torch` overrides the choice.

The measurement (~0.2 s) is made once per machine and torch version and kept in the cache
directory (`cpu-gemm.json`), like a tuned-kernel cache: later runs start without it, and a run
and its resume cannot pick differently because the machine happened to be busy.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.errors import UserError

BACKENDS = ("auto", "onednn", "torch")
ENV = "BERTCLI_CPU_GEMM"
# oneDNN must win by this margin (the measurement is cached per machine, so the choice does
# not flip between a run and its resume; the margin keeps a near-tie on torch's own path)
MIN_SPEEDUP = 1.1

_use_onednn = False


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """x (M, K) @ weight (N, K)^T + bias: oneDNN's fp32 inner product."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _register_flops() -> None:
    """Let torch's FlopCounterMode count oneDNN's linear as it counts addmm (2 M K N)."""
    try:
        from torch.utils.flop_counter import register_flop_formula

        @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
        def _flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            rows = 1
            for size in x_shape[:-1]:
                rows *= size
            return 2 * rows * x_shape[-1] * w_shape[0]

    except (AttributeError, RuntimeError, ImportError, ValueError):
        pass  # no oneDNN op (then it is never used) or a counter without registration


_register_flops()


class _OneDnnLinear(torch.autograd.Function):
    """F.linear with all three products in oneDNN (the weight gradient computed transposed,
    as oneDNN's inner product wants its operands)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        flat = x.reshape(-1, x.shape[-1])
        return _onednn_linear(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.contiguous().view(-1, grad.shape[-1])  # (M, N); autograd may pass expanded
        # or transposed gradients, whose strides oneDNN multiplies slowly
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear(g, weight.t().contiguous(), None).view(x.shape)  # g @ W
        if ctx.needs_input_grad[1]:
            flat = x.reshape(-1, x.shape[-1])  # (M, K)
            grad_w = _onednn_linear(flat.t(), g.t(), None).t()  # (x^T g)^T = g^T x, (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """`F.linear`, through oneDNN for fp32 CPU tensors when `choose` picked it."""
    if (
        _use_onednn
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() >= 2
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    ):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) whose product goes through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def onednn_enabled() -> bool:
    """Whether `linear` takes the oneDNN path now."""
    return _use_onednn


def set_backend(name: str) -> None:
    """Force a backend: `onednn` or `torch` (tests, benchmarks)."""
    global _use_onednn
    if name not in ("onednn", "torch"):
        raise ValueError(f"unknown CPU GEMM backend {name!r}")
    if name == "onednn" and not onednn_available():
        raise UserError(f"{ENV}=onednn: this torch build has no usable oneDNN linear")
    _use_onednn = name == "onednn"


def onednn_available() -> bool:
    """This torch build has oneDNN's linear, and it computes what F.linear does."""
    try:
        x, w, b = torch.randn(8, 16), torch.randn(4, 16), torch.randn(4)
        return torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-4)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _step_seconds(fn, x, w, b, grad: torch.Tensor, repeats: int) -> float:
    """The best of `repeats` forward + backward passes of one linear layer."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first builds oneDNN's primitives
        start = time.perf_counter()
        fn(x, w, b).backward(grad)
        best = min(best, time.perf_counter() - start)
    return best


def measure(hidden: int = 256, tokens: int = 2048, repeats: int = 3) -> float:
    """How many times faster oneDNN runs a BERT-shaped linear layer (forward + backward) here."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=gen, requires_grad=True)
    w = torch.randn(4 * hidden, hidden, generator=gen, requires_grad=True)
    b = torch.zeros(4 * hidden, requires_grad=True)
    grad = torch.randn(tokens, 4 * hidden, generator=gen)
    ours = _step_seconds(_OneDnnLinear.apply, x, w, b, grad, repeats)
    theirs = _step_seconds(F.linear, x, w, b, grad, repeats)
    return theirs / ours


def choose(device: torch.device, precision: str = "fp32") -> tuple[str, float | None]:
    """Pick the CPU linear backend for this process: (`onednn` or `torch`, the measured speedup
    or None where nothing was measured). Only fp32 on the CPU is affected (bf16 autocast
    already multiplies with oneDNN)."""
    global _use_onednn
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in BACKENDS:
        raise UserError(f"{ENV} must be one of {', '.join(BACKENDS)}, got {wanted!r}")
    _use_onednn = False
    if device.type != "cpu" or precision != "fp32" or wanted == "torch":
        return "torch", None
    if wanted == "onednn":
        set_backend("onednn")
        return "onednn", None
    if not onednn_available():
        return "torch", None
    speedup = _cached_speedup()
    _use_onednn = speedup >= MIN_SPEEDUP
    return ("onednn" if _use_onednn else "torch"), speedup


def machine_key() -> str:
    """What the measurement depends on: the CPU model, torch's version, the thread count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _cached_speedup() -> float:
    """The speedup measured on this machine before, else measured now and kept."""
    from bertcli.atomic import write_text_atomic
    from bertcli.data.token_cache import default_cache_dir

    path = default_cache_dir() / "cpu-gemm.json"
    key = machine_key()
    try:
        if path.stat().st_size > 64 << 10:  # a few keys at most: anything larger is not ours
            raise ValueError("oversized")
        known = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(known, dict) and isinstance(known.get(key), (int, float)):
            return float(known[key])
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or len(known) > 64:
        known = {}
    speedup = measure()
    known[key] = round(speedup, 3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(known, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache: measure again next time
    return speedup
