"""Unpadding: run the token-wise parts of BERT on the real tokens of a batch only.

A padded batch `(B, T, ...)` with an attention mask `(B, T)` holds `nnz = mask.sum()` real
tokens. `Unpadding` records where they are (as DeepLearningExamples' and MosaicBERT's
`unpad_input` do), `unpad` gathers them into `(nnz, ...)` and `pad` scatters them back, with
zeros at the padding. Both are plain `index_select` / `index_copy`, so autograd handles them.

`nnz` and `max_seqlen` are data-dependent sizes. Computing them from a mask on a GPU is a host
sync, so the trainer builds `Unpadding` from the batch while it is still on the CPU and moves
it to the device with the batch (`Unpadding.to`).

`attend_grouped` is attention on the unpadded layout for CPUs (flash-attn's varlen kernel does the
same on GPUs): sequences of similar length share one SDPA call (`length_groups`), because one call
per sequence (as bertcli did before) costs a few dozen small kernels per sequence and layer, which on a
busy 2-core CPU made the unpadded step slower than the padded one at sequence 128 (issue 22).

`unpad_pays` is the measured rule for when unpadding is worth its gathers at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionGroup:
    """Sequences that attend in one SDPA call, padded to the longest of them."""

    index: torch.Tensor  # (g, L) int64 rows of the unpadded layout; nnz (a zero row) at padding
    mask: torch.Tensor | None  # (g, 1, 1, L) bool, True = real key; None when none is padded
    valid: torch.Tensor  # (n,) int64 flat positions in g * L of the real tokens, batch-major
    rows: torch.Tensor  # (n,) int64 their rows in the unpadded layout

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AttentionGroup:
        """The same group on `device`."""
        return AttentionGroup(
            self.index.to(device, non_blocking=non_blocking),
            None if self.mask is None else self.mask.to(device, non_blocking=non_blocking),
            self.valid.to(device, non_blocking=non_blocking),
            self.rows.to(device, non_blocking=non_blocking),
        )


# A group holds sequences at least this share of its longest one; at most MAX_GROUPS groups.
GROUP_MIN_SHARE = 0.75
MAX_GROUPS = 4


def length_groups(
    lengths: tuple[int, ...], min_share: float = GROUP_MIN_SHARE, max_groups: int = MAX_GROUPS
) -> list[list[int]]:
    """Sequence numbers grouped for attention: longest first, a new group when a sequence is
    shorter than `min_share` of its group's longest, the rest in the last of `max_groups`.

    Empty sequences (no tokens) are left out. Pure: host integers in, host integers out.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (
            lengths[i] >= min_share * lengths[groups[-1][0]] or len(groups) == max_groups
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]  # batch order inside a group: the valid rows ascend


def attention_groups(lengths: tuple[int, ...]) -> tuple[AttentionGroup, ...]:
    """The `AttentionGroup`s of a batch with these sequence lengths (built on the host)."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    nnz = starts[-1]
    out = []
    for members in length_groups(lengths):
        L = max(lengths[i] for i in members)
        slot = torch.arange(L)  # (L,)
        count = torch.tensor([lengths[i] for i in members])  # (g,)
        real = slot[None, :] < count[:, None]  # (g, L)
        first = torch.tensor([starts[i] for i in members])  # (g,)
        index = torch.where(real, first[:, None] + slot[None, :], nnz)  # (g, L)
        mask = None if bool(real.all()) else real[:, None, None, :]
        valid = torch.nonzero(real.flatten()).flatten()
        out.append(AttentionGroup(index, mask, valid, index.flatten().index_select(0, valid)))
    return tuple(out)


def unpad_pays(device_type: str, padding_share: float) -> bool:
    """Whether the unpadded layout beats the padded one for a batch with this much padding.

    Unpadding saves the token-wise work on the padding but costs a gather before the encoder,
    a scatter after it and, on a CPU, gathers around each layer's attention. On a GPU (flash-attn
    varlen or one padded SDPA call) the gathers are cheap next to the kernels, so any padding
    pays. On a CPU they are not: see `CPU_MIN_PADDING`.
    """
    if padding_share <= 0.0:
        return False
    if device_type == "cpu":
        return padding_share >= CPU_MIN_PADDING
    return True


# Measured on the 2-core box (benchmarks/run.py --only unpad,race): below this padding share
# the padded step is as fast or faster on real WikiText-2 shards (10% padding at 128, 20% at 512).
CPU_MIN_PADDING = 0.25


@dataclass
class Unpadding:
    """Where the real tokens of a `(B, T)` batch are."""

    indices: torch.Tensor  # (nnz,) int64: flat positions b * T + t of the real tokens
    cu_seqlens: torch.Tensor  # (B + 1,) int32: start of each sequence in the unpadded layout
    max_seqlen: int  # the longest sequence in the batch (flash-attn's varlen argument)
    batch: int  # B
    seqlen: int  # T
    lengths: tuple[int, ...] = ()  # real tokens of each sequence, host integers (CPU attention)
    groups: tuple[AttentionGroup, ...] = ()  # sequences batched together for CPU attention

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
        host = tuple(lengths.tolist())
        return cls(indices, cu_seqlens, max_seqlen, B, T, host, attention_groups(host))

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
            self.lengths,
            tuple(g.to(device, non_blocking) for g in self.groups),
        )


def unpad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(B, T, ...) -> (nnz, ...): the real tokens, in batch-major order."""
    return x.reshape(u.batch * u.seqlen, *x.shape[2:]).index_select(0, u.indices)


def pad(x: torch.Tensor, u: Unpadding) -> torch.Tensor:
    """(nnz, ...) -> (B, T, ...), zeros at the padding."""
    out = x.new_zeros(u.batch * u.seqlen, *x.shape[1:])  # (B*T, ...)
    return out.index_copy(0, u.indices, x).view(u.batch, u.seqlen, *x.shape[1:])


def attend_grouped(
    qkv: torch.Tensor, u: Unpadding, num_heads: int, dropout: float
) -> torch.Tensor:
    """(nnz, 3H) packed q/k/v -> (nnz, H): each sequence attends over its own real tokens, with
    one SDPA call per group of similar lengths (`u.groups`, masked inside a group)."""
    nnz, three_h = qkv.shape
    hidden = three_h // 3
    head_size = hidden // num_heads
    padded = torch.cat([qkv, qkv.new_zeros(1, three_h)])  # (nnz + 1, 3H): row nnz is padding
    parts, rows = [], []
    for group in u.groups:
        g, L = group.index.shape
        x = padded.index_select(0, group.index.flatten()).view(g, L, 3, num_heads, head_size)
        q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)  # each (g, nh, L, hs)
        y = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=group.mask, dropout_p=dropout
        )
        y = y.transpose(1, 2).reshape(g * L, hidden)  # (g*L, H)
        parts.append(y.index_select(0, group.valid))  # (n, H): the real tokens only
        rows.append(group.rows)
    if not parts:  # a batch of all padding
        return qkv.new_zeros(0, hidden)
    out = torch.cat(parts)  # (nnz, H) in group order
    where = torch.cat(rows)  # (nnz,) the unpadded row of each
    return out.new_empty(nnz, hidden).index_copy(0, where, out)  # back in batch order
