"""Unpadding: run the token-wise parts of BERT on the real tokens of a batch only.

A padded batch `(B, T, ...)` with an attention mask `(B, T)` holds `nnz = mask.sum()` real
tokens. `Unpadding` records where they are (as DeepLearningExamples' and MosaicBERT's
`unpad_input` do), `unpad` gathers them into `(nnz, ...)` and `pad` scatters them back, with
zeros at the padding. Both are plain `index_select` / `index_copy`, so autograd handles them.

`nnz` and `max_seqlen` are data-dependent sizes. Computing them from a mask on a GPU is a host
sync, so the trainer builds `Unpadding` from the batch while it is still on the CPU and moves
it to the device with the batch (`Unpadding.to`).

`attend_each` is attention on the unpadded layout for CPUs: flash-attn's varlen kernel does the
same on GPUs.
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
    lengths: tuple[int, ...] = ()  # real tokens of each sequence, host integers (CPU attention)

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
        return cls(indices, cu_seqlens, max_seqlen, B, T, tuple(lengths.tolist()))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Unpadding:
        """The same record on `device` (the sizes stay host integers)."""
        return Unpadding(
            self.indices.to(device, non_blocking=non_blocking),
            self.cu_seqlens.to(device, non_blocking=non_blocking),
            self.max_seqlen,
            self.batch,
            self.seqlen,
            self.lengths,
        )


def unpad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(B, T, ...) -> (nnz, ...): the real tokens, in batch-major order."""
    return x.reshape(u.batch * u.seqlen, *x.shape[2:]).index_select(0, u.indices)


def pad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(nnz, ...) -> (B, T, ...), zeros at the padding."""
    out = x.new_zeros(u.batch * u.seqlen, *x.shape[1:])  # (B*T, ...)
    return out.index_copy(0, u.indices, x).view(u.batch, u.seqlen, *x.shape[1:])


def attend_each(qkv: torch.Tensor, u: Unpadding, num_heads: int, dropout: float) -> torch.Tensor:
    """(nnz, 3H) packed q/k/v -> (nnz, H): each sequence attends over its own real tokens.

    One unmasked SDPA call per sequence, so padding costs neither the T x T scores nor a
    scatter to the padded layout and back: the CPU twin of `flash_attn_varlen_qkvpacked_func`.
    A loop over the batch is cheap on a CPU; on a GPU every call would be a kernel launch, so
    GPUs without flash-attn keep the padded SDPA.
    """
    nnz, three_h = qkv.shape
    head_size = three_h // 3 // num_heads
    out = []
    for seq in qkv.split(list(u.lengths)):  # (L, 3H) per sequence, a view
        if not len(seq):
            continue  # an all-padding row has no tokens to attend from
        q, k, v = seq.view(1, -1, 3, num_heads, head_size).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out.append(y.transpose(1, 2).reshape(-1, three_h // 3))  # (L, H)
    if not out:  # a batch of all padding
        return qkv.new_zeros(0, three_h // 3)
    return torch.cat(out)
