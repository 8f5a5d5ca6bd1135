"""What can speed up the step on this machine: torch.compile's toolchain and flash-attn.

Both are checked before training starts, so a missing piece is one clear line, not a
traceback from deep inside the first step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bertcli.errors import UserError


def compile_problem(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run here (None when it can)."""
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not is_dynamo_supported():
        return "torch.compile does not support this Python/PyTorch build"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile on CUDA needs triton (pip install triton)"
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except (exc.InvalidCxxCompiler, RuntimeError, OSError):
        return "torch.compile on the CPU needs a C++ compiler (install g++ or set CXX)"
    return None


def check_compile(device: torch.device) -> None:
    """`--compile` exits with one line (code 2) where the compiler is missing; no fallback."""
    problem = compile_problem(device)
    if problem:
        raise UserError(f"--compile: {problem}; run without --compile")


def flash_attention(device: torch.device, precision: str) -> tuple[Callable | None, str | None]:
    """flash-attn's varlen attention if it is installed and usable, else None, with a note
    worth one info line when it is installed but cannot be used here."""
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func
    except ImportError:
        return None, None  # not installed: SDPA, silently (the normal case)
    except Exception as error:  # a broken build (e.g. compiled for another torch)
        return None, f"flash-attn is installed but does not load ({error}); using SDPA"
    if device.type != "cuda":
        return None, None
    if precision not in ("bf16", "fp16"):
        return None, "flash-attn needs --precision bf16 or fp16; using SDPA attention"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:  # flash-attn 2 needs Ampere (sm80) or newer
        return None, f"flash-attn does not support this GPU (sm{major}{minor}); using SDPA"
    return flash_attn_varlen_qkvpacked_func, None
