"""Learning-rate policies: each a small pure function of the step (NeMo 0.x's family).

`step` is the 0-based index of the optimizer step about to be taken; `W` the warmup steps, `T`
`total_steps`. During warmup (`step < W`) every policy but `constant` ramps linearly. After
warmup, `p = (step - W) / (T - W)` (clamped to [0, 1]) is the fraction of the decay phase done.
Reference: NeMo 0.x `nemo/utils/lr_policies.py` (`WarmupPolicy` and its subclasses).

| policy                | lr(step) after warmup                     | vs NeMo 0.x                   |
|-----------------------|-------------------------------------------|-------------------------------|
| warmup (all but const)| lr * (step + 1) / W              (step<W) | NeMo: (step + 1) / (W + 1) [1]|
| `warmup-annealing`    | min + (lr - min) * (1 - p)                | `WarmupAnnealing`: same at    |
|                       |                                           | min 0 (NeMo has no floor)     |
| `cosine`              | min + (lr - min) * (1 + cos(pi * p)) / 2  | `CosineAnnealing`: same       |
| `square`              | min + (lr - min) * (1 - p) ** 2           | `SquareAnnealing`: same at    |
|                       |                                           | min 0; NeMo clamps [2]        |
| `square-root`         | min + (lr - min) * (1 - p) ** 0.5         | `SquareRootAnnealing` uses    |
|                       |                                           | step/T, not p [3]             |
| `polynomial`          | min + (lr - min) * (1 - p) ** power       | `PolynomialDecayAnnealing`    |
|                       |                                           | (cycle=False): same           |
| `inverse-square-root` | max(min, lr * sqrt((W + 1) / (step + 1))) | `InverseSquareRootAnnealing`: |
|                       |                                           | same (NeMo has no floor)      |
| `warmup-hold`         | lr                                        | `WarmupPolicy`: same          |
| `constant`            | lr (no warmup)                            | —                             |

Where we differ from NeMo, on purpose:
[1] Our warmup reaches the peak `lr` on its last step; NeMo's stops at lr * W / (W + 1) and
    reaches the peak one step later. Neither takes a zero-lr step; ours is the ramp
    DeepLearningExamples' BERT uses.
[2] We interpolate towards `min_lr` (as NeMo's cosine and polynomial do) instead of clamping
    `lr * factor` at `min_lr`, so every decaying policy treats `--min-lr` the same way. With
    the default `min_lr = 0` the two are identical.
[3] NeMo's `SquareRootAnnealing` ignores the warmup in its decay (`(T - step) / T`), so the
    rate drops abruptly from `lr` to lr * sqrt((T - W) / T) when warmup ends; ours starts the
    decay at the end of warmup like every other policy, so it is continuous.
Past `T` (never reached by the trainer) NeMo returns 0; we stay at the end value (`min_lr`).
"""

from __future__ import annotations

import math

POLICIES = (
    "warmup-annealing",
    "cosine",
    "square",
    "square-root",
    "polynomial",
    "inverse-square-root",
    "warmup-hold",
    "constant",
)


def learning_rate(
    policy: str,
    step: int,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    power: float = 1.0,
) -> float:
    """The learning rate for optimizer step `step` (0-based) under `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"unknown lr policy {policy!r}")
    if policy == "constant":
        return lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if policy == "warmup-hold":
        return lr
    if policy == "inverse-square-root":
        # NeMo's and fairseq's: equal to lr at the end of warmup, then falls as 1/sqrt(step)
        return max(min_lr, lr * math.sqrt((warmup_steps + 1) / (step + 1)))
    decay_steps = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / decay_steps)
    if policy == "warmup-annealing":
        factor = 1.0 - p
    elif policy == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * p))
    elif policy == "square":
        factor = (1.0 - p) ** 2
    elif policy == "square-root":
        factor = (1.0 - p) ** 0.5
    else:  # polynomial
        factor = (1.0 - p) ** power
    return min_lr + (lr - min_lr) * factor


def warmup_steps_for(total_steps: int, warmup_steps: int | None, warmup_ratio: float) -> int:
    """Explicit warmup steps win; otherwise a ratio of the total."""
    if warmup_steps is not None:
        return warmup_steps
    return int(round(warmup_ratio * total_steps))
