"""Unpadding: run the token-wise parts of BERT on the real tokens of a batch only.

A padded batch `(B, T, ...)` with an attention mask `(B, T)` holds `nnz = mask.sum()` real
tokens. `Unpadding` records where they are (as DeepLearningExamples' and MosaicBERT's
`unpad_input` do), `unpad` gathers them into `(nnz, ...)` and `pad` scatters them back, with
zeros at the padding. Both are plain `index_select` / `index_copy`, so autograd handles them.

`nnz` and `max_seqlen` are data-dependent sizes. Computing them from a mask on a GPU is a host
sync, so the trainer builds `Unpadding` from the batch while it is still on the CPU and moves
it to the device with the batch (`Unpadding.to`).

Attention on the unpadded layout: flash-attn's varlen kernel on GPUs that have it, else (CPUs
too) q/k/v scattered back to the padded layout for one masked SDPA call. A CPU used to run one
SDPA call per sequence instead; that costs a few dozen small kernels per sequence and layer, and
on a busy 2-core CPU it made the unpadded step slower than the padded one (issue 22: 1.26x
transformers against 3.15x at mini 16 x 128). So did grouping sequences of similar length into a
few calls (1.36x the padded step's time at 16 x 128, load 11), while the single padded call cost
what the padded step does (0.99x). `unpad_pays` is the measured rule for when unpadding is worth
its gathers at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Unpadding:
    """Where the real tokens of a `(B, T)` batch are."""

    indices: torch.Tensor  # (nnz,) int64: flat positions b * T + t of the real tokens
    cu_seqlens: torch.Tensor  # (B + 1,) int32: start of each sequence in the unpadded layout
    max_seqlen: int  # the longest sequence in the batch (flash-attn's varlen argument)
    batch: int  # B
    seqlen: int  # T

    @property
    def nnz(self) -> int:
        """Real tokens in the batch."""
        return self.indices.numel()

    @property
    def dense(self) -> bool:
        """No padding at all: unpadding would only copy."""
        return self.nnz == self.batch * self.seqlen

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Unpadding:
        """From a (B, T) 0/1 mask (a host sync if the mask is on a GPU)."""
        B, T = attention_mask.shape
        real = attention_mask.reshape(-1) != 0  # (B*T,)
        indices = torch.nonzero(real).flatten()  # (nnz,)
        lengths = attention_mask.ne(0).sum(dim=1, dtype=torch.int32)  # (B,)
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        max_seqlen = int(lengths.max()) if B else 0
        return cls(indices, cu_seqlens, max_seqlen, B, T)

    @property
    def padding_share(self) -> float:
        """The fraction of the batch's slots that are padding."""
        return 1.0 - self.nnz / max(1, self.batch * self.seqlen)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Unpadding:
        """The same record on `device` (the sizes stay host integers)."""
        return Unpadding(
            self.indices.to(device, non_blocking=non_blocking),
            self.cu_seqlens.to(device, non_blocking=non_blocking),
            self.max_seqlen,
            self.batch,
            self.seqlen,
        )


def unpad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(B, T, ...) -> (nnz, ...): the real tokens, in batch-major order."""
    return x.reshape(u.batch * u.seqlen, *x.shape[2:]).index_select(0, u.indices)


def pad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(nnz, ...) -> (B, T, ...), zeros at the padding."""
    out = x.new_zeros(u.batch * u.seqlen, *x.shape[1:])  # (B*T, ...)
    return out.index_copy(0, u.indices, x).view(u.batch, u.seqlen, *x.shape[1:])


def unpad_pays(device_type: str, padding_share: float) -> bool:
    """Whether the unpadded layout beats the padded one for a batch with this much padding.

    Unpadding saves the token-wise work on the padding but costs a gather before the encoder, a
    scatter after it and, without flash-attn, a scatter and a gather around each layer's
    attention. On a GPU those are cheap next to the kernels, so any padding pays. On a CPU they
    are not: below `CPU_MIN_PADDING` the padded step is as fast or faster.
    """
    if padding_share <= 0.0:
        return False
    if device_type == "cpu":
        return padding_share >= CPU_MIN_PADDING
    return True


# Measured on the shared 2-core box (benchmarks/run.py --only real, issue 22): the padded step
# was faster at WikiText-2's 11-13% padding (shards at 128) and at the 27% of twelve 4 x 512
# batches (unpadded 1.08x its time; 25% let 4 of them unpad, which cost the default 8%); at 41%
# padding the unpadded one won (0.92x the padded step's time).
CPU_MIN_PADDING = 0.35
