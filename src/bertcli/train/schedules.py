"""Learning-rate policies: each a small pure function of the step (the seed's NeMo family).

`step` is the 0-based index of the optimizer step about to be taken. During warmup
(`step < warmup`) every policy but `constant` ramps linearly: `lr * (step + 1) / warmup`. After
warmup, `p = (step - warmup) / (total - warmup)` is the fraction of the decay phase done, and:

| policy                | lr(step)                                          |
|-----------------------|---------------------------------------------------|
| `warmup-annealing`    | min + (lr - min) * (1 - p)                        |
| `cosine`              | min + (lr - min) * (1 + cos(pi * p)) / 2          |
| `square`              | min + (lr - min) * (1 - p) ** 2                   |
| `square-root`         | min + (lr - min) * (1 - p) ** 0.5                 |
| `polynomial`          | min + (lr - min) * (1 - p) ** power               |
| `inverse-square-root` | max(min, lr / sqrt(step - warmup + 1))            |
| `warmup-hold`         | lr                                                |
| `constant`            | lr (no warmup)                                    |
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
        return max(min_lr, lr / math.sqrt(step - warmup_steps + 1))
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
