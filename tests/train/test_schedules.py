"""Each LR policy's value at chosen steps equals its formula, computed by hand here."""

from __future__ import annotations

import math

import pytest

from bertcli.train.schedules import POLICIES, learning_rate, warmup_steps_for

LR, TOTAL, WARM = 1e-3, 110, 10


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "constant"])
def test_linear_warmup(policy):
    assert learning_rate(policy, 0, LR, TOTAL, WARM) == pytest.approx(1e-4)
    assert learning_rate(policy, 4, LR, TOTAL, WARM) == pytest.approx(5e-4)
    assert learning_rate(policy, 9, LR, TOTAL, WARM) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "policy, step, expected",
    [
        ("warmup-annealing", 10, 1e-3),
        ("warmup-annealing", 60, 5e-4),  # halfway through decay: p = 50/100
        ("warmup-annealing", 85, 2.5e-4),
        ("cosine", 60, 5e-4),  # (1 + cos(pi/2)) / 2 = 0.5
        ("cosine", 35, 1e-3 * (1 + math.cos(math.pi * 0.25)) / 2),
        ("square", 60, 2.5e-4),  # 0.5 ** 2
        ("square-root", 60, 1e-3 * math.sqrt(0.5)),
        ("polynomial", 60, 5e-4),  # power 1 = linear
        ("inverse-square-root", 10, 1e-3),
        ("inverse-square-root", 13, 5e-4),  # 1 / sqrt(4)
        ("warmup-hold", 100, 1e-3),
        ("constant", 0, 1e-3),
        ("constant", 100, 1e-3),
        ("warmup-annealing", 110, 0.0),
    ],
)
def test_policy_values(policy, step, expected):
    assert learning_rate(policy, step, LR, TOTAL, WARM) == pytest.approx(expected, rel=1e-9)


def test_min_lr_and_power():
    assert learning_rate("cosine", 110, LR, TOTAL, WARM, min_lr=1e-5) == pytest.approx(1e-5)
    assert learning_rate("warmup-annealing", 60, LR, TOTAL, WARM, min_lr=1e-4) == pytest.approx(
        1e-4 + 0.9e-3 * 0.5
    )
    assert learning_rate("polynomial", 60, LR, TOTAL, WARM, power=3.0) == pytest.approx(1.25e-4)


def test_warmup_steps_for():
    assert warmup_steps_for(1000, None, 0.01) == 10
    assert warmup_steps_for(1000, 7, 0.5) == 7
