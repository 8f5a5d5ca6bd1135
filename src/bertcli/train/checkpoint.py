"""Checkpoints: atomic save, find the newest complete one, and the trainer state for resume.

A checkpoint directory `checkpoints/step_00001000/` is a transformers BERT directory
(`config.json`, `model.safetensors`), plus the tokenizer files, plus `trainer_state.pt`
(optimizer, scaler, RNG states, data position) and a readable `trainer_state.json`. It is written
under a temporary name, fsynced and renamed, so a kill or a power loss at any moment leaves the
previous one intact; pruning renames a checkpoint to a temporary name before deleting it, so a
kill midway never leaves a partial checkpoint under a final name.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertcli.atomic import atomic_directory, remove_tree
from bertcli.errors import MIN_FREE, UserError, check_space, writing
from bertcli.hf import write_pretrained_files
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import BertTokenizer, write_tokenizer_files

STATE_FILE = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
_NAME = re.compile(r"^step_(\d+)$")
SAFETENSORS_HEADER_LIMIT = 100_000_000  # the safetensors library's own cap
# every file save_checkpoint writes (and the weights name transformers' older layout used)
CHECKPOINT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        STATE_FILE,
        STATE_JSON,
    }
)


def is_own_checkpoint_dir(path: Path) -> bool:
    """Whether `path` is recognisably written by bertcli, so deleting or replacing it loses
    nothing of a user's: a real directory (not a link) holding only regular files, each named
    as a file save_checkpoint writes. A user's notes, a sub-directory or a link keep it alive."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all(
        entry.name in CHECKPOINT_FILES and entry.is_file() and not entry.is_symlink()
        for entry in path.iterdir()
    )


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, as plain ints, tuples and tensors: what
    `torch.load(weights_only=True)` reads without allow-listing anything."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s result (or an older checkpoint's, which held numpy's tuple)."""
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    random.setstate(state["python"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU of the saving machine: a resume on fewer GPUs sets those it has
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def save_checkpoint(
    directory: Path,
    model: BertForPreTraining,
    tokenizer: BertTokenizer | None,
    trainer_state: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """Write `directory` atomically: temporary sibling, then rename."""
    if (directory.exists() or directory.is_symlink()) and not is_own_checkpoint_dir(directory):
        raise UserError(
            f"{directory} exists and holds files bertcli does not write; move it away to let "
            "the run save this step"
        )
    needed = _tensor_bytes(model.state_dict()) + _tensor_bytes(trainer_state) + MIN_FREE
    check_space(directory, needed, "the checkpoint")  # a full disk: one line, older ones intact
    with atomic_directory(directory) as tmp, writing(directory, needed, "the checkpoint"):
        write_pretrained_files(model, tmp)
        if tokenizer is not None:
            write_tokenizer_files(tokenizer, tmp)
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / STATE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return directory


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor and array in a nested state (what torch.save will write)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as given, or the newest checkpoint of a run directory."""
    from bertcli.hf import is_checkpoint_dir

    path = Path(path)
    if path.is_dir() and not is_checkpoint_dir(path):
        newest = latest_checkpoint(path / "checkpoints")
        if newest is not None:
            return newest
    return path


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (0 = keep all); each is renamed
    to a temporary name first, so a kill midway leaves debris the next start sweeps, not a
    checkpoint without its trainer state."""
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(root)[:-keep_last]:
        if is_own_checkpoint_dir(path):  # one holding a user's file is kept (and counted)
            remove_tree(path)


def incomplete_checkpoints(root: Path) -> list[Path]:
    """`step_N` directories without a trainer state that bertcli wrote (`is_own_checkpoint_dir`):
    left by earlier versions' pruning. Anything else under such a name is left alone."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if _NAME.match(p.name) and not (p / STATE_FILE).exists() and is_own_checkpoint_dir(p)
    )


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is exactly as long as the header says (no truncation)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        # bounded before reading: safetensors itself refuses headers over 100 MB
        if length > min(SAFETENSORS_HEADER_LIMIT, size - 8):
            raise ValueError(f"header length {length} is impossible in a {size}-byte file")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
        for k, v in header.items()
        if k != "__metadata__"
    ):
        raise ValueError("the header is not a safetensors tensor index")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size != 8 + length + end:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes, expected {8 + length + end}")


def verify_checkpoint(directory: Path) -> str | None:
    """Why `directory` is not a complete, readable checkpoint (None if it is): every file parses,
    the weights are not truncated, and every member of the trainer state matches its CRC."""
    name = "config.json"
    try:
        json.loads((directory / name).read_text(encoding="utf-8"))
        name = STATE_JSON
        json.loads((directory / name).read_text(encoding="utf-8"))
        name = "model.safetensors"
        _check_safetensors(directory / name)
        name = STATE_FILE
        with zipfile.ZipFile(directory / name) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"{STATE_FILE}: member {bad} is damaged"
        load_trainer_state(directory)  # the same reader --resume uses: no pickle, right shape
        name = "tokenizer.json"
        if (directory / name).exists():
            json.loads((directory / name).read_text(encoding="utf-8"))
    except (
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        struct.error,
        zipfile.BadZipFile,
    ) as exc:
        return f"{name}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    except UserError as exc:
        return f"{STATE_FILE}: " + str(exc).removeprefix(f"{directory / STATE_FILE}: ")
    return None


def newest_valid_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, and the newer ones skipped with their reasons."""
    skipped = []
    for _, path in reversed(list_checkpoints(root)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


# what a resumed run may not change silently: (key in the saved state, how the user names it)
GUARDED = (
    ("batch_size", "--batch-size"),
    ("batches_per_step", "--batches-per-step"),
    ("max_seq_length", "--max-seq-length"),
    ("train_data", "--train-data"),
    ("optimizer", "--optimizer"),
    ("nsp", "--nsp/--no-nsp"),
    ("world_size", "world size"),
    ("precision", "precision"),
)


# how the global batch is split: a new split of the same global batch is an elastic resume
_SPLIT = ("batch_size", "batches_per_step", "world_size")


def global_batch(settings: dict[str, Any]) -> int | None:
    """Sequences per optimizer step: batch size x batches per step x processes (None if the
    settings lack one, as checkpoints of older versions without a world size do)."""
    values = [settings.get(key) for key in _SPLIT]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return values[0] * values[1] * values[2]


def elastic_split(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """'2 processes x 8 x 1 -> 1 process x 16 x 1' when the global batch is the checkpoint's but
    split differently over processes, batch size and batches per step; else None."""
    before, after = global_batch(saved), global_batch(current)
    if before is None or before != after or all(saved[k] == current[k] for k in _SPLIT):
        return None

    def split(s: dict[str, Any]) -> str:
        plural = "es" if s["world_size"] > 1 else ""
        return f"{s['world_size']} process{plural} x {s['batch_size']} x {s['batches_per_step']}"

    return f"{split(saved)} -> {split(current)}"


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'--batch-size 16 -> 32' for each guarded setting that differs from the checkpoint's; a
    new split of an unchanged global batch (`elastic_split`) is not a change."""
    elastic = elastic_split(saved, current) is not None
    changes = []
    for key, name in GUARDED:
        if elastic and key in _SPLIT:
            continue
        if key in saved and key in current and saved[key] != current[key]:
            before, after = saved[key], current[key]
            if isinstance(before, list | tuple):
                before, after = ",".join(map(str, before)), ",".join(map(str, after))
            changes.append(f"{name} {before} -> {after}")
    return changes


def load_summary(directory: Path) -> dict[str, Any]:
    """The readable trainer_state.json of a checkpoint ({} if unreadable)."""
    try:
        data = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _legacy_numpy_globals() -> list[Any]:
    """What checkpoints of bertcli <= 0.x need besides tensors: numpy's RNG keys were pickled as
    an ndarray. Rebuilding a plain array runs no code of the file's choosing; anything else it
    names is still refused."""
    from numpy._core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 and 1 names
        allowed.append((multiarray._reconstruct, f"{module}._reconstruct"))
    return allowed


_COUNTERS = ("step", "epoch", "step_in_epoch")


def _shape_problem(state: Any) -> str | None:
    """Why `state` is not what `Trainer._trainer_state` writes (None if it is)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    for key in (*_COUNTERS, "optimizer", "scaler"):
        if key not in state:
            return f"no {key!r}"
    for key in (*_COUNTERS, "skipped_steps", "samples_in_epoch"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key!r} must be a non-negative integer, got {_short(value)}"
    optimizer = state["optimizer"]
    if not (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) for g in optimizer["param_groups"])
    ):
        return "'optimizer' is not an optimizer state_dict"
    for key in ("scaler", "train_config", "run"):
        if key in state and not isinstance(state[key], dict):
            return f"{key!r} must be a dict, got {_short(state[key])}"
    per_rank = state.get("rng_per_rank") or [state.get("rng")]
    if not isinstance(per_rank, list) or not per_rank:
        return "'rng_per_rank' must be a list"
    for rng in per_rank:
        if not (
            isinstance(rng, dict)
            and all(k in rng for k in ("python", "numpy", "torch"))
            and isinstance(rng["torch"], torch.Tensor)
            and rng["torch"].dtype == torch.uint8
        ):
            return "an RNG state is not one bertcli saves"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_UNSAFE = re.compile(r"GLOBAL ([\w.]+)")


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """trainer_state.pt of a checkpoint, or UserError naming it: the one reader of the trainer
    state (resume, --init-optimizer-from, verification). `weights_only=True`: the file can hold
    tensors, numbers, strings and containers, never an object whose unpickling runs code; its
    shape is checked, so a wrong one is one line, not a KeyError later."""
    path = directory / STATE_FILE
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _UNSAFE.search(str(exc))
        what = f"it asks to import {named.group(1)}" if named else str(exc).splitlines()[0]
        raise UserError(
            f"{path}: refused: {what}; a trainer state holds only tensors and plain values, and "
            "bertcli never runs code from a checkpoint"
        ) from None
    except Exception as exc:  # a damaged file raises many kinds of errors
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"{path}: unreadable trainer state ({detail})") from None
    problem = _shape_problem(state)
    if problem:
        raise UserError(f"{path}: not a bertcli trainer state: {problem}")
    return state
