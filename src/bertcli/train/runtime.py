"""Where training runs: torchrun's environment, the device, the process group, and AMP.

The CUDA-only pieces (NCCL, bf16/fp16 autocast, GradScaler) are chosen here by device and kept
small; the CPU twin (gloo, fp32 or CPU bf16 autocast) is what CI exercises.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bertcli.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Runtime:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    cpu_gemm: str = "torch"  # fp32 CPU linear layers: torch's BLAS or oneDNN (bertcli.cpu_gemm)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """torch.amp autocast for bf16/fp16; a no-op context for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling only for fp16 (bf16 has fp32's range); disabled otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank: decisions that depend on files are made once, by
        rank 0, so ranks that see different files (no shared filesystem) cannot diverge."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_all(self, error: str | None) -> None:
        """Raise UserError on every rank if any rank has an error (the lowest rank's message),
        so no rank is left waiting in a collective for a peer that stopped."""
        errors = [error]
        if self.distributed:
            errors = [None] * self.world_size
            dist.all_gather_object(errors, error)
        for message in errors:
            if message:
                raise UserError(message)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def resolve_device(device: str, local_rank: int) -> torch.device:
    """auto = the local GPU when there is one, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be auto, cpu or cuda, got {device!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto = bf16 on CUDA devices that support it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return precision


def init_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Read torchrun's variables, pick the device and join the process group if needed."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        stop_with_launcher()
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(minutes=30),
            device_id=dev if dev.type == "cuda" else None,
        )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runtime = Runtime(rank, local_rank, world_size, dev, resolve_precision(precision, dev))
    runtime.cpu_gemm = _choose_cpu_gemm(runtime)
    return runtime


def _choose_cpu_gemm(runtime: Runtime) -> str:
    """Measure once per process, then use rank 0's choice everywhere: all ranks of a job sum
    in the same order, and a resume on the same machine picks what the run picked."""
    from bertcli import cpu_gemm

    chosen, _ = cpu_gemm.choose(runtime.device, runtime.precision)
    agreed = runtime.from_main(chosen)
    if agreed != chosen:
        cpu_gemm.set_backend(agreed)
    return agreed


def shutdown(runtime: Runtime) -> None:
    """Leave the process group cleanly: all ranks meet first, so none tears down its
    connections while a peer still uses them (gloo aborts the process otherwise)."""
    if runtime.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


_PR_SET_PDEATHSIG = 1


def stop_with_launcher(poll_seconds: float = 0.5) -> None:
    """Stop this worker (SIGTERM: save at the next step boundary, then exit) when the launcher
    that started it dies, so a `kill -9` of torchrun cannot leave orphans training.

    Linux delivers the signal itself (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread watches
    the parent PID. Either sends one signal only: a second SIGTERM would cut the final save short.
    """
    parent = os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    if armed:
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="bertcli-launcher-watch", daemon=True).start()


def run_environment(runtime: Runtime) -> dict[str, Any]:
    """The versions and the device every command's run.json records, so that runs compare."""
    import platform

    import tokenizers
    import torch

    from bertcli import __version__

    return {
        "bertcli_version": __version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "python_version": platform.python_version(),
        "device": str(runtime.device),
        "precision": runtime.precision,
        "cpu_gemm": runtime.cpu_gemm,
        "world_size": runtime.world_size,
    }
