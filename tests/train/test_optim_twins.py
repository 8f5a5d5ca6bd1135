"""CPU twins of tests/gpu/test_optimizers.py: what CI can check of the comparison itself.

On CUDA, `build_optimizer` gives fused AdamW and the GPU test compares it with the CPU's AdamW;
here the CPU's AdamW as `build_optimizer(..., "cpu")` gives it (torch's fused CPU kernel, the
faster one there) is checked against the foreach implementation over the same 20 gradients, and LAMB against itself from a state_dict round
trip, so a difference the GPU run reports is the GPU's, not the reference's.
"""

from __future__ import annotations

import copy

import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.optim import build_optimizer, parameter_groups


def _model() -> BertForPreTraining:
    torch.manual_seed(0)
    return BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=500, hidden_size=64, num_attention_heads=2)
    )


def _drive(pairs, steps: int = 20) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = [
            torch.randn(p.shape, generator=gen) * (1 + step) / 10 for p in pairs[0][0].parameters()
        ]
        for model, optimizer in pairs:
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def test_cpu_adamw_matches_foreach_over_20_steps():
    loop_model = _model()
    foreach_model = copy.deepcopy(loop_model)
    start = copy.deepcopy(loop_model)
    loop = build_optimizer("adamw", loop_model, 1e-3, 0.01, (0.9, 0.999), "cpu", eps=1e-6)
    foreach = torch.optim.AdamW(
        parameter_groups(foreach_model, 0.01), lr=1e-3, eps=1e-6, foreach=True
    )
    _drive([(loop_model, loop), (foreach_model, foreach)])
    for p, q in zip(loop_model.parameters(), foreach_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    moved = max(
        float((p - s).detach().abs().max()) for p, s in zip(loop_model.parameters(), start.parameters())
    )
    assert moved > 1e-3  # 20 steps of lr 1e-3 moved the weights: the comparison is not vacuous


def test_lamb_on_a_copy_of_its_state_continues_identically():
    a = _model()
    opt_a = build_optimizer("lamb", a, 1e-3, 0.01, (0.9, 0.999), "cpu")
    _drive([(a, opt_a)], steps=5)
    b = copy.deepcopy(a)
    opt_b = build_optimizer("lamb", b, 1e-3, 0.01, (0.9, 0.999), "cpu")
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    _drive([(a, opt_a), (b, opt_b)], steps=5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
