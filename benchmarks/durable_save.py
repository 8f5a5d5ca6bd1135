"""What durability costs a checkpoint save: fsync of every file and directory around the rename
(what `save_checkpoint` does) against the same save with fsync switched off.

    python benchmarks/durable_save.py [--preset mini] [--repeats 5]
                                      [--json benchmarks/results/durable_save.json]

The two variants alternate (durable, plain, plain, durable, ...) in one directory on one disk, so a busy
machine slows both alike; the best of the repeats is reported, as `timeit` does. The figure is a
ratio: `durable_over_plain` = 1.3 means a durable save takes 30% longer. It depends on the disk
(and its write cache) far more than on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.train.checkpoint import save_checkpoint
from bertcli.train.optim import build_optimizer


def main() -> None:
    """Time durable and plain saves side by side; print (and optionally write) the ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = BertForPreTraining(BertConfig.from_preset(args.preset))
    optimizer = build_optimizer("adamw", model, 1e-4, 0.01, (0.9, 0.999), "cpu")
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()  # the moments exist: the state is as large as in training
    state = {"step": 1, "optimizer": optimizer.state_dict()}
    real_fsync = os.fsync
    times: dict[str, list[float]] = {"durable": [], "plain": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        for i in range(args.repeats):
            order = ("durable", "plain") if i % 2 == 0 else ("plain", "durable")
            for variant in order:  # alternate who goes first: no order effect
                os.fsync = real_fsync if variant == "durable" else (lambda fd: None)
                try:
                    start = time.perf_counter()
                    path = Path(root) / f"{variant}_{i:08d}"
                    save_checkpoint(path, model, None, state, {"step": i})
                    times[variant].append(time.perf_counter() - start)
                finally:
                    os.fsync = real_fsync
    best = {k: min(v) for k, v in times.items()}
    result = {
        "preset": args.preset,
        "parameters": model.num_parameters(),
        "best_seconds": best,
        "durable_over_plain": best["durable"] / best["plain"],
        "machine": platform.platform(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
