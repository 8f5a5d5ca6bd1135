"""LR policies against values computed by hand here, and against NeMo 0.x's formulas.

The NeMo restatements below follow `nemo/utils/lr_policies.py` (NeMo 0.x) line by line for the
decay phase, where we chose to match it; the docstring of `bertcli.train.schedules` lists where
we differ and why, and `test_documented_differences_from_nemo` pins each difference.
"""

from __future__ import annotations

import math

import pytest

from bertcli.train.schedules import POLICIES, learning_rate, warmup_steps_for

LR, TOTAL, WARM = 1e-3, 110, 10


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "constant"])
def test_linear_warmup_edges(policy):
    assert learning_rate(policy, 0, LR, TOTAL, WARM) == pytest.approx(1e-4)
    assert learning_rate(policy, 4, LR, TOTAL, WARM) == pytest.approx(5e-4)
    # the last warmup step reaches the peak, and the first decay step is still the peak
    assert learning_rate(policy, WARM - 1, LR, TOTAL, WARM) == pytest.approx(1e-3)
    assert learning_rate(policy, WARM, LR, TOTAL, WARM) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "policy, step, expected",
    [
        ("warmup-annealing", 60, 5e-4),  # halfway through decay: p = 50/100
        ("warmup-annealing", 85, 2.5e-4),
        ("warmup-annealing", 110, 0.0),
        ("cosine", 60, 5e-4),  # (1 + cos(pi/2)) / 2 = 0.5
        ("cosine", 35, 1e-3 * (1 + math.cos(math.pi * 0.25)) / 2),
        ("cosine", 110, 0.0),
        ("square", 60, 2.5e-4),  # 0.5 ** 2
        ("square", 110, 0.0),
        ("square-root", 60, 1e-3 * math.sqrt(0.5)),
        ("square-root", 110, 0.0),
        ("polynomial", 60, 5e-4),  # power 1 = linear
        ("polynomial", 110, 0.0),
        ("inverse-square-root", 13, 1e-3 * math.sqrt(11 / 14)),
        ("inverse-square-root", 43, 1e-3 * 0.5),  # sqrt(11 / 44) = 1/2
        ("inverse-square-root", 110, 1e-3 * math.sqrt(11 / 111)),
        ("warmup-hold", 100, 1e-3),
        ("warmup-hold", 110, 1e-3),
        ("constant", 0, 1e-3),
        ("constant", 110, 1e-3),
    ],
)
def test_policy_values(policy, step, expected):
    assert learning_rate(policy, step, LR, TOTAL, WARM) == pytest.approx(expected, rel=1e-12)


def test_inverse_square_root_is_continuous_and_falls_as_one_over_sqrt_step():
    """The issue's example: warmup 1,000; at step 2,000 NeMo gives ~0.71 lr (the old code 0.03)."""
    lr = 1.0
    at_end = learning_rate("inverse-square-root", 1000, lr, 100_000, 1000)
    last_warm = learning_rate("inverse-square-root", 999, lr, 100_000, 1000)
    assert at_end == pytest.approx(1.0) and last_warm == pytest.approx(1.0)
    assert learning_rate("inverse-square-root", 2000, lr, 100_000, 1000) == pytest.approx(
        math.sqrt(1001 / 2001)
    )
    assert 0.70 < learning_rate("inverse-square-root", 2000, lr, 100_000, 1000) < 0.71
    # a floor, which NeMo does not have
    assert learning_rate("inverse-square-root", 10**6, lr, 100, 10, min_lr=0.5) == 0.5


def test_min_lr_and_power():
    assert learning_rate("cosine", 110, LR, TOTAL, WARM, min_lr=1e-5) == pytest.approx(1e-5)
    assert learning_rate("warmup-annealing", 60, LR, TOTAL, WARM, min_lr=1e-4) == pytest.approx(
        1e-4 + 0.9e-3 * 0.5
    )
    assert learning_rate("polynomial", 60, LR, TOTAL, WARM, power=3.0) == pytest.approx(1.25e-4)
    assert learning_rate("polynomial", 110, LR, TOTAL, WARM, power=3.0, min_lr=2e-5) == (
        pytest.approx(2e-5)
    )
    assert learning_rate("square", 110, LR, TOTAL, WARM, min_lr=3e-5) == pytest.approx(3e-5)


def test_no_warmup():
    assert learning_rate("warmup-annealing", 0, LR, 100, 0) == pytest.approx(LR)
    assert learning_rate("cosine", 50, LR, 100, 0) == pytest.approx(LR / 2)
    assert learning_rate("inverse-square-root", 3, LR, 100, 0) == pytest.approx(LR / 2)


# ---- NeMo 0.x restated (decay phase: step >= warmup) -------------------------------------------


def _nemo(policy: str, step: int, lr: float, total: int, warm: int, power: float = 1.0) -> float:
    if policy == "warmup-annealing":  # WarmupAnnealing
        progress, warmup_ratio = step / total, warm / total
        return lr * max((progress - 1.0) / (warmup_ratio - 1.0), 0.0)
    if policy == "cosine":  # CosineAnnealing -> _cosine_annealing(step - W, T - W), min_lr 0
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    if policy == "square":  # SquareAnnealing -> _square_annealing, min_lr 0
        return max(lr * ((total - warm - (step - warm)) / (total - warm)) ** 2, 0.0)
    if policy == "polynomial":  # PolynomialDecayAnnealing -> _poly_decay(cycle=False)
        s, d = min(step - warm, total - warm), total - warm
        return lr * math.pow(1.0 - s / d, power)
    if policy == "inverse-square-root":  # InverseSquareRootAnnealing
        return lr / ((step + 1) / (warm + 1)) ** 0.5
    if policy == "warmup-hold":  # WarmupPolicy._get_lr
        return lr
    raise AssertionError(policy)


@pytest.mark.parametrize(
    "policy",
    ["warmup-annealing", "cosine", "square", "polynomial", "inverse-square-root", "warmup-hold"],
)
@pytest.mark.parametrize("total, warm", [(110, 10), (1000, 0), (57, 13)])
def test_matches_nemo_after_warmup(policy, total, warm):
    for step in sorted({warm, warm + 1, (warm + total) // 2, total - 1, total}):
        for power in (1.0, 2.5) if policy == "polynomial" else (1.0,):
            ours = learning_rate(policy, step, 2e-3, total, warm, power=power)
            nemo = _nemo(policy, step, 2e-3, total, warm, power=power)
            assert ours == pytest.approx(nemo, rel=1e-12, abs=1e-18), (policy, step)


def test_documented_differences_from_nemo():
    w, t = 10, 110
    # [1] warmup: ours is (step + 1) / W of the peak, NeMo's (step + 1) / (W + 1)
    for step in range(w):
        ours = learning_rate("cosine", step, LR, t, w)
        assert ours == pytest.approx(LR * (step + 1) / w)
        assert ours / (LR * (step + 1) / (w + 1)) == pytest.approx((w + 1) / w)
    # [3] square-root: NeMo's first decay step is lr * sqrt((T - W) / T); ours is lr, and ours
    # equals NeMo's formula with the warmup taken out of T and step
    assert learning_rate("square-root", w, LR, t, w) == pytest.approx(LR)
    for step in (w, 40, t):
        nemo_shifted = LR * ((t - w - (step - w)) / (t - w)) ** 0.5
        assert learning_rate("square-root", step, LR, t, w) == pytest.approx(nemo_shifted)


def test_warmup_steps_for():
    assert warmup_steps_for(1000, None, 0.01) == 10
    assert warmup_steps_for(1000, 7, 0.5) == 7
    assert warmup_steps_for(1000, 0, 0.5) == 0
