"""Parity with transformers' BertForPreTraining (the independent reference), both directions."""

from __future__ import annotations

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.errors import UserError
from bertcli.model import BertForPreTraining


def tiny_config(**kw) -> BertConfig:
    base = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
    )
    base.update(kw)
    return BertConfig(**base)


def padded_batch(vocab: int, B: int = 4, T: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[3, 6:] = 0
    ids[mask == 0] = 0
    types[mask == 0] = 0
    labels = torch.full_like(ids, -100)
    for b, positions in enumerate([[1, 3, 9], [2, 10], [4, 5, 12, 13], [1]]):
        labels[b, positions] = ids[b, positions]
    nsp = torch.tensor([0, 1, 1, 0])
    return ids, types, mask, labels, nsp


def hf_outputs(hf, ids, types, mask):
    return hf(input_ids=ids, token_type_ids=types, attention_mask=mask)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_ours_to_transformers(tmp_path, act):
    transformers = pytest.importorskip("transformers")  # the reference
    torch.manual_seed(0)
    cfg = tiny_config(hidden_act=act)
    ours = BertForPreTraining(cfg).eval()
    ours.save_pretrained(tmp_path / "ckpt")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "ckpt").eval()
    ids, types, mask, labels, nsp = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        a = ours(ids, types, mask)
        b = hf_outputs(theirs, ids, types, mask)
    valid = mask.bool()
    assert (a.mlm_logits - b.prediction_logits)[valid].abs().max() < 1e-4
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() < 1e-4


def test_transformers_to_ours(tmp_path):
    transformers = pytest.importorskip("transformers")  # the reference
    torch.manual_seed(1)
    hf_cfg = transformers.BertConfig(**tiny_config().to_dict())
    theirs = transformers.BertForPreTraining(hf_cfg).eval()
    # make biases and LayerNorms non-trivial so a swapped name would show
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "hf")
    ours = BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids, types, mask, labels, nsp = padded_batch(101, seed=3)
    with torch.no_grad():
        a = ours(ids, types, mask, masked_lm_labels=labels, next_sentence_labels=nsp)
        b = theirs(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            labels=labels,
            next_sentence_label=nsp,
        )
        dense = ours(ids, types, mask)
    valid = mask.bool()
    assert (dense.mlm_logits - b.prediction_logits)[valid].abs().max() < 1e-4
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() < 1e-4
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)


def test_legacy_bin_and_gamma_beta_names(tmp_path):
    transformers = pytest.importorskip("transformers")  # the reference
    torch.manual_seed(2)
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**tiny_config().to_dict()))
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in theirs.state_dict().items()
    }
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "pytorch_model.bin")
    theirs.config.to_json_file(tmp_path / "old" / "config.json")
    ours = BertForPreTraining.from_pretrained(tmp_path / "old").eval()
    ids, types, mask, *_ = padded_batch(101)
    with torch.no_grad():
        a = ours(ids, types, mask).nsp_logits
        b = theirs.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert (a - b.seq_relationship_logits).abs().max() < 1e-4


def test_sparse_equals_dense_at_labelled_positions():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask, labels, nsp = padded_batch(101)
    with torch.no_grad():
        dense = model(ids, types, mask).mlm_logits
        sparse = model(ids, types, mask, masked_lm_labels=labels)
    selected = labels != -100
    assert sparse.mlm_logits.shape == (int(selected.sum()), 101)
    torch.testing.assert_close(sparse.mlm_logits, dense[selected], atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(dense[selected], labels[selected])
    torch.testing.assert_close(sparse.mlm_loss, expected, atol=1e-6, rtol=1e-6)


def test_mlm_only_loss_and_no_labels():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    ids, types, mask, labels, nsp = padded_batch(101)
    out = model(ids, types, mask, masked_lm_labels=labels)
    assert out.nsp_loss is None
    assert torch.equal(out.loss, out.mlm_loss)
    both = model.eval()(ids, types, mask, masked_lm_labels=labels, next_sentence_labels=nsp)
    torch.testing.assert_close(both.loss, both.mlm_loss + both.nsp_loss)
    none = model(ids)
    assert none.loss is None and none.mlm_logits.shape == (4, 16, 101)


def test_no_labelled_tokens_gives_zero_not_nan():
    model = BertForPreTraining(tiny_config())
    ids = torch.randint(0, 101, (2, 8))
    out = model(ids, masked_lm_labels=torch.full_like(ids, -100))
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0


def test_decoder_is_tied_to_word_embeddings(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    hidden = torch.randn(3, 32)
    # a gradient through the decoder alone (no embedding lookup) reaches word_embeddings
    model.mlm_head(hidden).logsumexp(-1).sum().backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # ... and equals the gradient of the same head with an untied copy of the matrix
    weight = model.decoder_weight.detach().clone().requires_grad_(True)
    h = model.mlm_norm(model.act(model.mlm_dense(hidden)))
    torch.nn.functional.linear(h, weight, model.mlm_bias).logsumexp(-1).sum().backward()
    torch.testing.assert_close(grad, weight.grad)
    # save / load keeps the tie: one tensor, so an update to one is the other
    model.save_pretrained(tmp_path / "tied")
    again = BertForPreTraining.from_pretrained(tmp_path / "tied")
    again.load_state_dict(model.state_dict())
    assert again.decoder_weight.data_ptr() == again.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        again.bert.embeddings.word_embeddings.weight[5].add_(1.0)
    assert torch.equal(again.decoder_weight[5], again.bert.embeddings.word_embeddings.weight[5])


def test_initialisation_follows_bert():
    cfg = tiny_config(hidden_size=128, num_attention_heads=2, intermediate_size=512)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg)
    w = model.bert.layers[0].ffn_in.weight
    assert abs(w.std().item() - cfg.initializer_range) < 0.002
    assert model.bert.layers[0].ffn_in.bias.abs().sum() == 0
    assert torch.all(model.bert.layers[0].attn_norm.weight == 1)
    assert model.bert.embeddings.word_embeddings.weight[cfg.pad_token_id].abs().sum() == 0


def test_save_load_roundtrip_assert_close(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    model.save_pretrained(tmp_path / "c")
    again = BertForPreTraining.from_pretrained(tmp_path / "c").eval()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    model = BertForPreTraining(tiny_config())
    model.save_pretrained(tmp_path / "c")
    weights = load_file(str(tmp_path / "c" / "model.safetensors"))
    del weights["cls.seq_relationship.bias"]
    save_file(weights, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(UserError, match="cls.seq_relationship.bias"):
        BertForPreTraining.from_pretrained(tmp_path / "c")

    model.save_pretrained(tmp_path / "d")
    weights = load_file(str(tmp_path / "d" / "model.safetensors"))
    weights["bert.pooler.dense.weight"] = torch.zeros(3, 3)
    save_file(weights, str(tmp_path / "d" / "model.safetensors"))
    with pytest.raises(UserError, match=r"bert.pooler.dense.weight has shape \(3, 3\)"):
        BertForPreTraining.from_pretrained(tmp_path / "d")

    (tmp_path / "e").mkdir()
    with pytest.raises(UserError, match="not a BERT checkpoint"):
        BertForPreTraining.from_pretrained(tmp_path / "e")


def test_bare_bert_model_checkpoint_loads_with_fresh_heads(tmp_path):
    transformers = pytest.importorskip("transformers")  # the reference
    torch.manual_seed(4)
    encoder = transformers.BertModel(transformers.BertConfig(**tiny_config().to_dict())).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.raises(UserError, match="missing tensor"):
        BertForPreTraining.from_pretrained(tmp_path / "encoder")
    from bertcli.hf import load_pretrained

    ours = load_pretrained(tmp_path / "encoder", allow_missing_heads=True).eval()
    assert "cls.seq_relationship.weight" in ours.fresh_heads
    assert "bert.pooler.dense.weight" not in ours.fresh_heads  # BertModel has a pooler
    ids, types, mask, *_ = padded_batch(101)
    with torch.no_grad():
        sequence, pooled = ours.bert(ids, types, mask)
        ref = encoder(input_ids=ids, token_type_ids=types, attention_mask=mask)
    valid = mask.bool()
    assert (sequence - ref.last_hidden_state)[valid].abs().max() < 1e-4
    assert (pooled - ref.pooler_output).abs().max() < 1e-4


def heavily_padded_batch(vocab: int, B: int = 6, T: int = 32, seed: int = 5):
    """Lengths from 3 to T, most rows under half full, labels on 15% of the real tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, T, 7, 12, 5, 16])[:B]
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    types = ((torch.arange(T)[None] >= (lengths[:, None] // 2)) & mask.bool()).long()
    ids[mask == 0] = 0
    labels = torch.full_like(ids, -100)
    chosen = (torch.rand(B, T, generator=g) < 0.15) & mask.bool()
    chosen[:, 0] = False
    chosen[0, 1] = True  # every row has at least one
    chosen[:, 1] |= True
    labels[chosen] = ids[chosen]
    nsp = torch.randint(0, 2, (B,), generator=g)
    return ids, types, mask, labels, nsp


@pytest.mark.parametrize("unpad_tokens", [True, False])
def test_heavy_padding_parity_both_ways(tmp_path, unpad_tokens):
    """Over half the tokens are padding: logits and loss still equal transformers' (< 1e-4)."""
    transformers = pytest.importorskip("transformers")  # the reference
    torch.manual_seed(6)
    ours = BertForPreTraining(tiny_config()).eval()
    ours.bert.unpad_tokens = unpad_tokens
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "ours").eval()
    ids, types, mask, labels, nsp = heavily_padded_batch(101)
    assert mask.float().mean() < 0.5
    with torch.no_grad():
        dense = ours(ids, types, mask)
        a = ours(ids, types, mask, masked_lm_labels=labels, next_sentence_labels=nsp)
        b = theirs(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            labels=labels,
            next_sentence_label=nsp,
        )
    valid = mask.bool()
    assert (dense.mlm_logits - b.prediction_logits)[valid].abs().max() < 1e-4
    assert (a.nsp_logits - b.seq_relationship_logits).abs().max() < 1e-4
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)

    # transformers -> ours, with non-trivial biases and LayerNorms
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "hf")
    back = BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    back.bert.unpad_tokens = unpad_tokens
    with torch.no_grad():
        c = back(ids, types, mask)
        d = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert (c.mlm_logits - d.prediction_logits)[valid].abs().max() < 1e-4
    assert (c.nsp_logits - d.seq_relationship_logits).abs().max() < 1e-4


def test_unpadded_gradients_equal_padded_gradients():
    """Training mode: the unpadded path gives the padded path's loss and every gradient."""
    from bertcli.unpad import Unpadding

    torch.manual_seed(7)
    model = BertForPreTraining(tiny_config())
    ids, types, mask, labels, nsp = heavily_padded_batch(101)
    assert model.bert._unpadding(mask, None) is not None  # the CPU path really unpads
    grads = []
    for unpad_tokens in (False, True):
        model.zero_grad()
        model.bert.unpad_tokens = unpad_tokens
        record = Unpadding.from_mask(mask) if unpad_tokens else None
        out = model(
            ids, types, mask, masked_lm_labels=labels, next_sentence_labels=nsp, unpadding=record
        )
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)



def test_unpad_pad_roundtrip_and_record():
    from bertcli.unpad import Unpadding, pad, unpad

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    u = Unpadding.from_mask(mask)
    assert u.indices.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    assert u.cu_seqlens.tolist() == [0, 3, 4, 8] and u.max_seqlen == 4 and not u.dense
    x = torch.randn(3, 4, 5)
    flat = unpad(x, u)
    assert torch.equal(flat, x[mask.bool()])
    back = pad(flat, u)
    assert torch.equal(back[mask.bool()], x[mask.bool()])
    assert back[~mask.bool()].abs().sum() == 0
    assert Unpadding.from_mask(torch.ones(2, 3)).dense


def test_static_positions_head_equals_sparse_head():
    """The (B, P) gather gives the boolean-selected head's logits and loss, slot for slot."""
    from bertcli.model import masked_positions

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask, labels, nsp = padded_batch(101)
    positions = masked_positions(labels, num_slots=6)
    assert positions.tolist() == [
        [1, 3, 9, 0, 0, 0],
        [2, 10, 0, 0, 0, 0],
        [4, 5, 12, 13, 0, 0],
        [1, 0, 0, 0, 0, 0],
    ]
    with torch.no_grad():
        sparse = model(ids, types, mask, masked_lm_labels=labels)
        static = model(ids, types, mask, masked_lm_labels=labels, masked_lm_positions=positions)
    assert static.mlm_logits.shape == (4, 6, 101)
    filled = static.mlm_targets != -100
    assert int(filled.sum()) == 10
    torch.testing.assert_close(static.mlm_logits[filled], sparse.mlm_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(static.mlm_targets[filled], sparse.mlm_targets)
    torch.testing.assert_close(static.mlm_loss, sparse.mlm_loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_matches_cross_entropy_by_hand(eps):
    """(1 - eps) * NLL + eps * mean over the vocabulary of -log p, averaged over labelled slots."""
    from bertcli.model import masked_positions

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask, labels, nsp = padded_batch(101)
    positions = masked_positions(labels, num_slots=5)
    with torch.no_grad():
        plain = model(ids, types, mask, masked_lm_labels=labels, masked_lm_positions=positions)
        smooth = model(
            ids,
            types,
            mask,
            masked_lm_labels=labels,
            masked_lm_positions=positions,
            label_smoothing=eps,
        )
    filled = plain.mlm_targets != -100
    logp = plain.mlm_logits[filled].log_softmax(-1)  # (N, V)
    target = plain.mlm_targets[filled]
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    by_hand = ((1 - eps) * nll - eps * logp.mean(-1)).mean()
    torch.testing.assert_close(smooth.mlm_loss, by_hand, atol=1e-5, rtol=1e-5)
    reference = torch.nn.functional.cross_entropy(
        plain.mlm_logits[filled], target, label_smoothing=eps
    )
    torch.testing.assert_close(smooth.mlm_loss, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.mlm_loss, nll.mean(), atol=1e-5, rtol=1e-5)
    assert smooth.mlm_loss > plain.mlm_loss  # an untrained model is far from uniform-smoothed


def test_forward_and_loss_have_no_graph_breaks():
    """torch._dynamo.explain over forward + loss (positions, NSP, smoothing): one graph."""
    from bertcli.model import masked_positions

    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config())
    ids, types, mask, labels, nsp = heavily_padded_batch(101)
    positions = masked_positions(labels, num_slots=8)

    def step(ids, types, mask, labels, nsp, positions):
        out = model(
            ids,
            types,
            mask,
            masked_lm_labels=labels,
            next_sentence_labels=nsp,
            masked_lm_positions=positions,
            label_smoothing=0.1,
        )
        return out.loss

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(ids, types, mask, labels, nsp, positions)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def reference_varlen(qkv, cu_seqlens, max_seqlen, dropout_p=0.0):
    """flash_attn_varlen_qkvpacked_func's contract, written out: (nnz, 3, nh, hs) packed
    sequences delimited by cu_seqlens -> (nnz, nh, hs), softmax(q k^T / sqrt(hs)) v each."""
    assert dropout_p == 0.0 and cu_seqlens.dtype == torch.int32
    out = torch.empty_like(qkv[:, 0])
    bounds = cu_seqlens.tolist()
    assert max_seqlen == max(b - a for a, b in zip(bounds, bounds[1:]))
    for start, end in zip(bounds, bounds[1:]):
        q, k, v = qkv[start:end].float().unbind(1)  # each (n, nh, hs)
        scores = torch.einsum("qhd,khd->hqk", q, k) / q.size(-1) ** 0.5
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)
    return out


def test_varlen_attention_path_matches_sdpa_path():
    """The flash-attn route (here through the written-out contract above, bf16 autocast on the
    CPU) gives the SDPA route's logits: the unpadded layout is handed over correctly."""
    from bertcli.unpad import Unpadding

    torch.manual_seed(8)
    model = BertForPreTraining(tiny_config()).eval()
    ids, types, mask, labels, nsp = heavily_padded_batch(101)
    record = Unpadding.from_mask(mask)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa = model(ids, types, mask, unpadding=record)
        calls = []
        model.use_flash_attention(lambda *a, **k: calls.append(1) or reference_varlen(*a, **k))
        varlen = model(ids, types, mask, unpadding=record)
        model.use_flash_attention(None)
    assert len(calls) == 2  # one per layer: the varlen route was taken
    valid = mask.bool()
    diff = (varlen.mlm_logits.float() - sdpa.mlm_logits.float())[valid].abs().max()
    assert diff < 0.05  # bf16 rounding; a mis-delimited sequence would be off by whole units
    assert (varlen.nsp_logits.float() - sdpa.nsp_logits.float()).abs().max() < 0.05
