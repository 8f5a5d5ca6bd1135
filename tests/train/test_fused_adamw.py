"""Fused AdamW on the CPU (issue 22): the default, and numerically the foreach AdamW."""

from __future__ import annotations

import copy

import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.optim import build_optimizer, parameter_groups


def tiny() -> BertForPreTraining:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForPreTraining(config)


def test_adamw_is_fused_on_the_cpu():
    opt = build_optimizer("adamw", tiny(), 1e-3, 0.01, (0.9, 0.999), "cpu")
    assert all(group["fused"] for group in opt.param_groups)


def test_fused_cpu_adamw_equals_foreach_over_20_training_steps():
    a = tiny()
    b = copy.deepcopy(a)
    fused = build_optimizer("adamw", a, 1e-3, 0.01, (0.9, 0.999), "cpu")
    foreach = torch.optim.AdamW(parameter_groups(b, 0.01), lr=1e-3, betas=(0.9, 0.999),
                                eps=1e-6, foreach=True, fused=False)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        ids = torch.randint(5, 96, (4, 16), generator=g)
        labels = torch.where(torch.rand(4, 16, generator=g) < 0.3, ids, -100)
        nsp = torch.randint(0, 2, (4,), generator=g)
        for model, opt in ((a, fused), (b, foreach)):
            out = model(ids, None, torch.ones_like(ids), masked_lm_labels=labels,
                        next_sentence_labels=nsp)  # fmt: skip
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    start = tiny()
    for (name, p), q, p0 in zip(a.named_parameters(), b.parameters(), start.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
        if name == "bert.layers.0.ffn_in.weight":
            assert (p - p0).abs().max() > 1e-3  # it trained: the comparison is not vacuous
