"""Several shard directories read as one dataset, with optional sampling weights (`DIR:WEIGHT`).

Like Megatron-LM's blended datasets, but per epoch, so the trainer's contract holds: `order(epoch)`
depends only on (seed, epoch), the trainer deals it to ranks and skips into it on resume.

How an epoch is sampled:
* An epoch has E examples, E = the directories' sizes added up. Without weights every example
  is read exactly once per epoch, as with one directory.
* With weights, directory i contributes n_i = E * w_i / sum(w) examples, rounded by largest
  remainder so that the n_i add up to E.
* Those n_i examples are whole passes over the directory, then the start of one more pass. Each
  pass is its own random order: shards in random order, examples shuffled within a shard (few
  shard loads). So within a pass nothing repeats; a directory repeats only when its weight asks
  for more than it holds, and a part pass takes whole shards first.
* The directories are interleaved at random: the epoch's sequence of directory labels is a seeded
  permutation of n_0 zeros, n_1 ones, ..., so any stretch of the epoch mixes them in proportion.

An index addresses directory i's example j as `offset[i] + j`; `masked_lm_positions` are padded
to the largest P (max_predictions_per_seq) of all directories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertcli.data.datasets import Example, PreprocessedDataset
from bertcli.errors import UserError


@dataclass(frozen=True)
class DataSource:
    """One `--train-data` value: a shard directory and its sampling weight (None: not given)."""

    path: Path
    weight: float | None = None


def parse_source(value: str | Path, flag: str = "--train-data", weights: bool = True) -> DataSource:
    """`DIR` or `DIR:WEIGHT` (an existing path that contains ':' is taken whole); where weights
    are not allowed, a weight is refused and anything else is a path."""
    text = str(value)
    if Path(text).exists() or ":" not in text:
        return DataSource(Path(text))
    path, raw = text.rsplit(":", 1)
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not weights:
        if math.isnan(weight):
            return DataSource(Path(text))
        raise UserError(f"{flag} {text}: weights (DIR:WEIGHT) apply to --train-data only")
    if not (math.isfinite(weight) and weight > 0):
        raise UserError(f"{flag} {text}: the weight {raw!r} is not a positive number")
    return DataSource(Path(path), weight)


def open_shard_data(
    values: list[str | Path],
    seed: int = 12345,
    flag: str = "--train-data",
    weights: bool = True,
) -> torch.utils.data.Dataset:
    """One shard directory as is, or several as a `BlendedDataset` (checked: no directory twice,
    one sequence length, weights for all or none)."""
    sources = [parse_source(v, flag, weights) for v in values]
    if not sources:
        raise UserError(f"{flag}: no shard directory given")
    given = [s.weight is not None for s in sources]
    if any(given) and not all(given):
        raise UserError(f"{flag}: give a weight to every directory (DIR:WEIGHT) or to none")
    datasets = [PreprocessedDataset(s.path, seed=seed, flag=flag) for s in sources]
    owner: dict[Path, Path] = {}  # shard file -> the value it came from
    for source, data in zip(sources, datasets):
        files = {f.resolve() for f in data.files}
        for file in files:
            if file in owner:
                first = owner[file]
                also = f" (also as {first})" if first != source.path else ""
                raise UserError(f"{flag}: {source.path} is listed twice{also}")
        owner.update(dict.fromkeys(files, source.path))
    for source, data in zip(sources[1:], datasets[1:]):
        if data.max_seq_length != datasets[0].max_seq_length:
            raise UserError(
                f"{flag}: {sources[0].path} holds {datasets[0].max_seq_length}-token sequences "
                f"but {source.path} holds {data.max_seq_length}-token ones; directories read "
                "together must share one sequence length"
            )
    if len(datasets) == 1:
        return datasets[0]
    return BlendedDataset(
        datasets,
        [s.path for s in sources],
        [s.weight for s in sources] if all(given) else None,
        seed,
    )


def apportion(total: int, weights: list[float]) -> np.ndarray:
    """`total` split in proportion to `weights`, rounded by largest remainder (sums to total)."""
    share = np.asarray(weights, dtype=np.float64) / float(sum(weights)) * total
    counts = np.floor(share).astype(np.int64)
    remainders = share - counts
    # ties go to the earlier directory: a stable sort keeps the order of equal remainders
    for i in np.argsort(-remainders, kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return counts


class BlendedDataset(torch.utils.data.Dataset):
    """Several `PreprocessedDataset`s as one index space, sampled per epoch as described above."""

    def __init__(
        self,
        datasets: list[PreprocessedDataset],
        paths: list[Path],
        weights: list[float] | None,
        seed: int = 12345,
    ):
        self.datasets = datasets
        self.paths = paths
        self.weights = weights
        self.seed = seed
        self.sizes = np.asarray([len(d) for d in datasets], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.max_seq_length = datasets[0].max_seq_length
        self.max_predictions = max(d.max_predictions for d in datasets)
        for data in datasets:
            data.max_predictions = self.max_predictions
        total = int(self.offsets[-1])
        self.counts = self.sizes.copy() if weights is None else apportion(total, weights)
        # the trainer asks for an epoch's order more than once (steps per epoch, then batches);
        # shuffling 10M labels takes seconds, so the latest one is kept
        self._order: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_order"] = None  # DataLoader workers do not need it
        return state

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> Example:
        d = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.datasets[d][i - int(self.offsets[d])]

    def check_vocab(self, vocab_size: int) -> None:
        """Each directory's shards against the model's vocabulary (see PreprocessedDataset)."""
        for data in self.datasets:
            data.check_vocab(vocab_size)

    def draws(self, d: int, epoch: int) -> np.ndarray:
        """Directory d's local indices for `epoch`: passes in fresh random orders, then a part."""
        data, need = self.datasets[d], int(self.counts[d])
        parts, p = [], 0
        while need > 0:
            perm = data.shard_local_permutation(np.random.default_rng([self.seed, epoch, d, p]))
            parts.append(perm[:need])
            need -= len(parts[-1])
            p += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """This epoch's indices (see the module docstring); unshuffled: every example once."""
        if not shuffle:
            return np.arange(len(self))
        if self._order is not None and self._order[0] == epoch:
            return self._order[1].copy()
        labels = np.random.default_rng([self.seed, epoch]).permutation(
            np.repeat(np.arange(len(self.datasets)), self.counts)
        )
        out = np.empty(len(labels), dtype=np.int64)
        for d in range(len(self.datasets)):
            out[labels == d] = self.offsets[d] + self.draws(d, epoch)
        self._order = (epoch, out)
        return out.copy()

    def describe(self) -> list[dict]:
        """What `run.json` records: each directory, its weight, size and examples per epoch."""
        return [
            {
                "path": str(path),
                "weight": weight,
                "examples": int(size),
                "examples_per_epoch": int(count),
            }
            for path, weight, size, count in zip(
                self.paths, self.weights or [None] * len(self.paths), self.sizes, self.counts
            )
        ]


def describe_sources(dataset: object) -> list[dict] | None:
    """The shard directories a dataset reads, for `run.json` (None for text data)."""
    if isinstance(dataset, BlendedDataset):
        return dataset.describe()
    if isinstance(dataset, PreprocessedDataset):
        n = len(dataset)
        return [
            {"path": str(dataset.files[0].parent), "weight": None, "examples": n,
             "examples_per_epoch": n}
        ]  # fmt: skip
    return None
