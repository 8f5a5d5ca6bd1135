"""LAMB and Novograd against their update rules computed by hand; parameter groups."""

from __future__ import annotations

import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.optim import Lamb, Novograd, parameter_groups


def test_lamb_two_steps_by_hand():
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    grads = [torch.tensor([[0.1, 0.2], [-0.3, 0.4]]), torch.tensor([[0.0, -0.1], [0.2, 0.1]])]
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    w, m, v = w0.clone(), torch.zeros(2, 2), torch.zeros(2, 2)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        update = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6) + 0.01 * w
        w = w - 0.1 * (w.norm() / update.norm()) * update
        torch.testing.assert_close(p.data, w)


def test_novograd_two_steps_by_hand():
    w0 = torch.tensor([1.0, -2.0, 0.5])
    grads = [torch.tensor([0.3, -0.1, 0.2]), torch.tensor([-0.2, 0.4, 0.1])]
    p = torch.nn.Parameter(w0.clone())
    opt = Novograd([p], lr=0.05, betas=(0.95, 0.98), eps=1e-8, weight_decay=0.001)
    w, m, v = w0.clone(), torch.zeros(3), None
    for g in grads:
        p.grad = g.clone()
        opt.step()
        norm_sq = (g * g).sum()
        v = norm_sq if v is None else 0.98 * v + 0.02 * norm_sq
        m = 0.95 * m + (g / (v.sqrt() + 1e-8) + 0.001 * w)
        w = w - 0.05 * m
        torch.testing.assert_close(p.data, w)


def test_no_weight_decay_on_biases_and_layernorm():
    model = BertForPreTraining(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        expect_no_decay = name.endswith("bias") or "norm" in name
        assert (id(p) in no_decay_ids) == expect_no_decay, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
