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


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
        remove_tree(path)


def incomplete_checkpoints(root: Path) -> list[Path]:
    """`step_N` directories without a trainer state: left by earlier versions' pruning."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if _NAME.match(p.name) and p.is_dir() and not (p / STATE_FILE).exists()
    )


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is exactly as long as the header says (no truncation)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
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
        name = "tokenizer.json"
        if (directory / name).exists():
            json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as exc:
        return f"{name}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
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


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'--batch-size 16 -> 32' for each guarded setting that differs from the checkpoint's."""
    changes = []
    for key, name in GUARDED:
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


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """trainer_state.pt of a checkpoint, or UserError naming it."""
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged pickle raises many kinds of errors
        raise UserError(f"{directory / STATE_FILE}: unreadable trainer state ({exc})") from None
