"""The unpadded path's choices (issue 22): which layout a batch gets, and how CPU attention
groups sequences. Both are pure; the grouped attention is checked against a per-sequence
reference (one unmasked SDPA call per sequence, the old route)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.unpad import (
    CPU_MIN_PADDING,
    Unpadding,
    attend_grouped,
    attention_groups,
    length_groups,
    unpad_pays,
)


def test_unpad_pays_by_device_and_padding_share():
    assert not unpad_pays("cpu", 0.0)
    assert not unpad_pays("cuda", 0.0)  # nothing to unpad
    assert not unpad_pays("cpu", 0.10)  # WikiText-2 shards at 128: the padded layout
    assert not unpad_pays("cpu", 0.20)  # ... and at 512
    assert unpad_pays("cpu", CPU_MIN_PADDING)
    assert unpad_pays("cpu", 0.6)
    assert unpad_pays("cuda", 0.05)  # cheap gathers next to GPU kernels


def test_length_groups_batches_similar_lengths():
    lengths = (128, 128, 100, 64, 127, 0, 30, 96)
    groups = length_groups(lengths)
    # 128, 128, 127, 100, 96 are within 75% of 128; 64 starts a group; 30 another
    assert groups == [[0, 1, 2, 4, 7], [3], [6]]
    assert all(g == sorted(g) for g in groups)
    assert 5 not in sum(groups, [])  # an empty sequence attends nowhere


def test_length_groups_caps_the_number_of_calls():
    lengths = tuple(2**k for k in range(10, 0, -1))  # every one under 75% of the one before
    groups = length_groups(lengths, max_groups=4)
    assert len(groups) == 4
    assert sorted(sum(groups, [])) == list(range(10))  # every sequence exactly once
    assert length_groups((5, 5, 5)) == [[0, 1, 2]]


def test_attention_groups_index_the_unpadded_rows():
    lengths = (3, 1, 0, 2)
    groups = attention_groups(lengths)
    nnz = sum(lengths)
    rows = torch.cat([g.rows for g in groups]).sort().values
    assert rows.tolist() == list(range(nnz))  # every real token once
    for g in groups:
        flat = g.index.flatten()
        assert (flat[g.valid] == g.rows).all()
        padding = torch.ones_like(flat, dtype=torch.bool)
        padding[g.valid] = False
        assert (flat[padding] == nnz).all()  # padding slots read the zero row
        assert (g.mask is None) == (not padding.any())


def _per_sequence(qkv: torch.Tensor, lengths, num_heads: int) -> torch.Tensor:
    """The reference: one unmasked SDPA call per sequence."""
    out = []
    for seq in qkv.split(list(lengths)):
        if not len(seq):
            continue
        q, k, v = seq.view(1, len(seq), 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(len(seq), -1))
    return torch.cat(out)


def test_grouped_attention_equals_per_sequence_attention():
    torch.manual_seed(0)
    mask = torch.zeros(6, 16, dtype=torch.long)
    for row, n in enumerate((16, 15, 9, 0, 4, 12)):
        mask[row, :n] = 1
    record = Unpadding.from_mask(mask)
    assert len(record.groups) == 3  # [16, 15, 12], [9], [4]
    qkv = torch.randn(record.nnz, 3 * 8, requires_grad=True)
    ours = attend_grouped(qkv, record, num_heads=2, dropout=0.0)
    ref = _per_sequence(qkv, record.lengths, num_heads=2)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), qkv)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), qkv)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)


def test_model_takes_the_padded_layout_when_padding_is_light():
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    bert = BertForPreTraining(config).bert
    light = torch.ones(4, 20, dtype=torch.long)
    light[0, 16:] = 0  # 5% padding
    heavy = torch.ones(4, 20, dtype=torch.long)
    heavy[:2, 5:] = 0  # 37.5% padding
    assert bert._unpadding(light, None) is None
    assert bert._unpadding(light, Unpadding.from_mask(light)) is None
    assert bert._unpadding(heavy, None) is not None
