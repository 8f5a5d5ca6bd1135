"""LAMB against a restatement of apex FusedLAMB; Novograd by hand; parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.optim import Lamb, Novograd, parameter_groups


def _apex_lamb(params, grads, ms, vs, step, lr, betas, eps, decays, max_grad_norm):
    """One step of apex's multi_tensor_lamb (csrc/multi_tensor_lamb.cu), restated per tensor.

    adam_w_mode=1, grad_averaging=1, bias_correction=1, use_nvlamb=False; in float64.
    """
    beta1, beta2 = betas
    global_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    clipped = global_norm / max_grad_norm if global_norm > max_grad_norm else 1.0
    out = []
    for w, g, m, v, decay in zip(params, grads, ms, vs, decays):
        # LAMBStage1Functor: r_p is 0 where decay == 0 ("special optimization for lamb stage 1")
        r_p = w if decay != 0 else torch.zeros_like(w)
        scaled = g / clipped
        m.mul_(beta1).add_((1 - beta1) * scaled)
        v.mul_(beta2).add_((1 - beta2) * scaled * scaled)
        m_unbiased, v_unbiased = m / (1 - beta1**step), v / (1 - beta2**step)
        update = m_unbiased / (v_unbiased.sqrt() + eps) + decay * r_p
        # LAMBStage2Functor: the trust ratio only where decay != 0
        ratio = lr
        if decay != 0:
            p_norm, u_norm = float(w.norm()), float(update.norm())
            ratio = lr * p_norm / u_norm if p_norm != 0 and u_norm != 0 else lr
        out.append(w - ratio * update)
    return out


def _lamb_problem():
    torch.manual_seed(0)
    w_decay = torch.randn(4, 3)
    w_plain = torch.randn(3)  # a bias-like tensor in the weight_decay=0 group
    grads = [(torch.randn(4, 3) * 2.0, torch.randn(3) * 3.0) for _ in range(3)]
    return w_decay, w_plain, grads


@pytest.mark.parametrize("max_grad_norm", [0.0, 1.0, 100.0])
def test_lamb_matches_apex_fused_lamb(max_grad_norm):
    """Decayed and non-decayed tensors, bias correction over 3 steps, global-norm clipping."""
    w_decay, w_plain, grads = _lamb_problem()
    a, b = torch.nn.Parameter(w_decay.clone()), torch.nn.Parameter(w_plain.clone())
    opt = Lamb(
        [{"params": [a], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}],
        lr=0.1,
        betas=(0.9, 0.99),
        eps=1e-6,
        max_grad_norm=max_grad_norm,
    )
    ref = [w_decay.double(), w_plain.double()]
    ms = [torch.zeros_like(t) for t in ref]
    vs = [torch.zeros_like(t) for t in ref]
    for step, (ga, gb) in enumerate(grads, start=1):
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
        ref = _apex_lamb(
            ref,
            [ga.double(), gb.double()],
            ms,
            vs,
            step,
            0.1,
            (0.9, 0.99),
            1e-6,
            (0.01, 0.0),
            max_grad_norm if max_grad_norm > 0 else float("inf"),
        )
        torch.testing.assert_close(a.data, ref[0].float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.data, ref[1].float(), rtol=1e-5, atol=1e-6)
        assert torch.equal(a.grad, ga) and torch.equal(b.grad, gb)  # gradients left untouched


def test_lamb_non_decayed_tensor_is_plain_adam_and_decayed_gets_trust_ratio():
    """The two rules tested apart, so a regression names which one broke."""
    w_decay, w_plain, grads = _lamb_problem()
    a, b = torch.nn.Parameter(w_decay.clone()), torch.nn.Parameter(w_plain.clone())
    opt = Lamb(
        [{"params": [a], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=0.1
    )
    a.grad, b.grad = grads[0][0].clone(), grads[0][1].clone()
    opt.step()
    # first step with bias correction: m_hat = g, v_hat = g^2, so the Adam update is g/(|g|+eps)
    adam_b = grads[0][1] / (grads[0][1].abs() + 1e-6)
    torch.testing.assert_close(b.data, w_plain - 0.1 * adam_b)
    u = grads[0][0] / (grads[0][0].abs() + 1e-6) + 0.01 * w_decay
    torch.testing.assert_close(a.data, w_decay - 0.1 * (w_decay.norm() / u.norm()) * u)


def test_lamb_after_clip_grad_norm_is_apex_clipping():
    """DLE clips the global norm before LAMB's moments: the trainer's clip_grad_norm_ followed by
    our LAMB (max_grad_norm off) gives apex's in-kernel clipping (to clip_grad_norm_'s 1e-6)."""
    w_decay, w_plain, grads = _lamb_problem()
    ours = [torch.nn.Parameter(w_decay.clone()), torch.nn.Parameter(w_plain.clone())]
    inside = [torch.nn.Parameter(w_decay.clone()), torch.nn.Parameter(w_plain.clone())]

    def groups(ps):
        return [{"params": [ps[0]], "weight_decay": 0.01}, {"params": [ps[1]], "weight_decay": 0}]

    opt_ours = Lamb(groups(ours), lr=0.05, max_grad_norm=0.0)
    opt_inside = Lamb(groups(inside), lr=0.05, max_grad_norm=1.0)
    for ga, gb in grads:
        for ps in (ours, inside):
            ps[0].grad, ps[1].grad = ga.clone(), gb.clone()
        norm = torch.nn.utils.clip_grad_norm_(ours, 1.0)
        assert norm > 1.0  # the clipping is exercised
        opt_ours.step()
        opt_inside.step()
        for x, y in zip(ours, inside):
            torch.testing.assert_close(x.data, y.data, rtol=1e-5, atol=1e-6)


def test_lamb_state_dict_resume_is_exact():
    w_decay, w_plain, grads = _lamb_problem()

    def make(ws):
        ps = [torch.nn.Parameter(w.clone()) for w in ws]
        groups = [{"params": [ps[0]], "weight_decay": 0.01}, {"params": [ps[1]], "weight_decay": 0}]
        return ps, Lamb(groups, lr=0.05)

    straight, opt = make([w_decay, w_plain])
    for ga, gb in grads:
        straight[0].grad, straight[1].grad = ga.clone(), gb.clone()
        opt.step()
    first, opt1 = make([w_decay, w_plain])
    first[0].grad, first[1].grad = grads[0][0].clone(), grads[0][1].clone()
    opt1.step()
    resumed, opt2 = make([first[0].data, first[1].data])
    opt2.load_state_dict(opt1.state_dict())
    for ga, gb in grads[1:]:
        resumed[0].grad, resumed[1].grad = ga.clone(), gb.clone()
        opt2.step()
    for x, y in zip(straight, resumed):
        assert torch.equal(x.data, y.data)


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
