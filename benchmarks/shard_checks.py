"""What the shard safety checks cost: the value checks on open and the full-disk write guard.

    python benchmarks/shard_checks.py [--examples 16384] [--seq 128] [--repeats 3]
                                      [--json benchmarks/results/shard-checks.json]

Every figure is a ratio of runs made side by side, alternated (checked, plain, checked, ...), so a
busy machine slows both sides alike; the best of the repeats is reported, as `timeit` does.

1. read: `read_shard(path, vocab_size)` (shapes + min/max of every dataset) over reading the six
   datasets with h5py and nothing else.
2. write: `ShardAppender` (free-space check per block, h5py writing through the sink that keeps a
   full disk's OSError) over the same appends to an `h5py.File` opened by path, in blocks of 2,048.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bertcli.data.shards import DTYPES, KEYS, ShardAppender, read_shard


def make_arrays(n: int, seq: int, pred: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Random but valid examples (ids below 30,522, sorted positions inside the sequence)."""
    gen = np.random.default_rng(seed)
    positions = np.sort(gen.choice(np.arange(1, seq), (n, pred)), axis=1)
    return {
        "input_ids": gen.integers(0, 30522, (n, seq)),
        "input_mask": np.ones((n, seq)),
        "segment_ids": np.repeat([[0] * (seq // 2) + [1] * (seq - seq // 2)], n, axis=0),
        "masked_lm_positions": positions,
        "masked_lm_ids": gen.integers(0, 30522, (n, pred)),
        "next_sentence_labels": gen.integers(0, 2, n),
    }


def plain_write(path: Path, blocks: list[dict[str, np.ndarray]]) -> None:
    """The appender's datasets and chunks, without its checks or sink (the code before them)."""
    with h5py.File(path, "w") as f:
        rows = 0
        for arrays in blocks:
            n = len(arrays["input_ids"])
            for key in KEYS:
                data = np.asarray(arrays[key], dtype=DTYPES[key])
                if rows == 0:
                    chunk_rows = 1024 if data.ndim == 2 else 65536
                    f.create_dataset(
                        key,
                        data=data,
                        maxshape=(None, *data.shape[1:]),
                        chunks=(min(chunk_rows, n), *data.shape[1:]),
                        compression="gzip",
                    )
                else:
                    f[key].resize(rows + n, axis=0)
                    f[key][rows:] = data
            rows += n


def checked_write(path: Path, blocks: list[dict[str, np.ndarray]]) -> None:
    appender = ShardAppender(path)
    for arrays in blocks:
        appender.append(arrays)
    appender.close()


def plain_read(path: Path) -> None:
    with h5py.File(path, "r") as f:
        for key in KEYS:
            np.asarray(f[key][...])


def best_ratio(checked, plain, repeats: int) -> dict[str, float]:
    """Alternate the two sides; best time of each and their ratio."""
    times: dict[str, list[float]] = {"checked": [], "plain": []}
    for _ in range(repeats):
        for name, fn in (("checked", checked), ("plain", plain)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    return {
        "checked_s": best["checked"],
        "plain_s": best["plain"],
        "ratio": best["checked"] / best["plain"],
    }


def main() -> None:
    """Measure both ratios and print (and optionally save) them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16384)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    arrays = make_arrays(args.examples, args.seq)
    blocks = [
        {k: v[i : i + 2048] for k, v in arrays.items()} for i in range(0, args.examples, 2048)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "checked.hdf5", Path(tmp) / "plain.hdf5"
        write = best_ratio(
            lambda: checked_write(a, blocks), lambda: plain_write(b, blocks), args.repeats
        )
        read = best_ratio(lambda: read_shard(a, 30522), lambda: plain_read(b), args.repeats)
    result = {
        "examples": args.examples,
        "seq": args.seq,
        "machine": platform.platform(),
        "read_checked_over_plain": read,
        "write_guarded_over_plain": write,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
