"""Out of GPU memory is a choice of batch size, so it is one line naming the flag to lower.

`torch.OutOfMemoryError` (CUDA's caching allocator giving up) surfaces from whatever kernel
allocated last, deep in forward or backward; the traceback says nothing a user can act on.
The trainer turns it into a `UserError` at the two places a batch is run: the training step
(`--batch-size`) and evaluation (`--eval-batch-size`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from bertcli.errors import UserError


def out_of_memory_message(flag: str, batch_size: int, seq_len: int, where: str) -> str:
    """The one line: what ran out, at which batch shape, and what to change."""
    advice = f"lower {flag}"
    if flag == "--batch-size":
        advice += " (and raise --batches-per-step by the same factor to keep the global batch)"
    return (
        f"out of GPU memory on {where} at {flag} {batch_size} x sequence length {seq_len}; {advice}"
    )


@contextlib.contextmanager
def batch_must_fit(
    flag: str, batch_size: int, seq_len: Callable[[], int], where: str
) -> Iterator[None]:
    """Run a batch; an out-of-memory error becomes one line naming `flag`.

    `seq_len` is called only on failure: the length is known once the batch has been read.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_message(flag, batch_size, seq_len(), where)) from None
