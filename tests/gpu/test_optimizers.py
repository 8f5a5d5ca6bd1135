"""The CUDA optimizers against their CPU twins: same start, same 20 gradients, fp32.

`build_optimizer(..., "cuda")` gives fused AdamW; it is compared with the foreach and the
for-loop AdamW on the CPU. LAMB (torch._foreach_*) on CUDA against LAMB on the CPU. The kernels
sum in different orders, so parameters agree to fp32 roundoff accumulated over 20 steps:
relative 1e-5 per tensor (AdamW), 1e-4 (LAMB, whose trust ratio divides two norms).
"""

from __future__ import annotations

import copy

import pytest
import torch

from bertcli.model import BertForPreTraining
from bertcli.train.optim import Lamb, build_optimizer, parameter_groups
from tests.gpu.synthetic import relative_error, small_config

pytestmark = [pytest.mark.gpu]

STEPS = 20


def twins(device):
    torch.manual_seed(0)
    cpu = BertForPreTraining(small_config(vocab=2048))
    return cpu, copy.deepcopy(cpu).to(device)


def drive(models_and_optimizers, steps: int = STEPS) -> None:
    """The same pseudo-random gradient sequence into every (model, optimizer), then step."""
    gen = torch.Generator().manual_seed(1)
    first = models_and_optimizers[0][0]
    for step in range(steps):
        grads = [torch.randn(p.shape, generator=gen) * (1 + step) / 10 for p in first.parameters()]
        for model, optimizer in models_and_optimizers:
            for p, g in zip(model.parameters(), grads):
                p.grad = g.to(p.device)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def assert_same_parameters(got, want, tol: float) -> None:
    worst = max(
        (relative_error(p, q), name)
        for (name, p), q in zip(got.named_parameters(), want.parameters())
    )
    assert worst[0] < tol, worst


def test_fused_adamw_on_cuda_matches_cpu_adamw(device):
    cpu, gpu = twins(device)
    cpu_foreach = copy.deepcopy(cpu)
    fused = build_optimizer("adamw", gpu, 1e-3, 0.01, (0.9, 0.999), device.type, eps=1e-6)
    assert fused.defaults["fused"] == (device.type == "cuda")
    loop = build_optimizer("adamw", cpu, 1e-3, 0.01, (0.9, 0.999), "cpu", eps=1e-6)
    foreach = torch.optim.AdamW(
        parameter_groups(cpu_foreach, 0.01), lr=1e-3, eps=1e-6, foreach=True
    )
    drive([(gpu, fused), (cpu, loop), (cpu_foreach, foreach)])
    assert_same_parameters(gpu, cpu_foreach, 1e-5)
    assert_same_parameters(gpu, cpu, 1e-5)
    moved = next(iter(gpu.parameters()))
    assert relative_error(moved, next(iter(twins(device)[0].parameters()))) > 1e-3  # it moved


def test_lamb_on_cuda_matches_lamb_on_cpu(device):
    cpu, gpu = twins(device)
    on_gpu = build_optimizer("lamb", gpu, 1e-3, 0.01, (0.9, 0.999), device.type)
    on_cpu = build_optimizer("lamb", cpu, 1e-3, 0.01, (0.9, 0.999), "cpu")
    assert isinstance(on_gpu, Lamb)
    drive([(gpu, on_gpu), (cpu, on_cpu)])
    assert_same_parameters(gpu, cpu, 1e-4)
