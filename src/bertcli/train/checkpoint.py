"""Checkpoints: atomic save, find the newest complete one, and the trainer state for resume.

A checkpoint directory `checkpoints/step_00001000/` is a transformers BERT directory
(`config.json`, `model.safetensors`), plus the tokenizer files, plus `trainer_state.pt`
(optimizer, scaler, RNG states, data position) and a readable `trainer_state.json`. It is written
under a temporary name and renamed, so a kill at any moment leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertcli.atomic import atomic_directory
from bertcli.errors import UserError
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
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: BertForPreTraining,
    tokenizer: BertTokenizer | None,
    trainer_state: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """Write `directory` atomically: temporary sibling, then rename."""
    with atomic_directory(directory) as tmp:
        write_pretrained_files(model, tmp)
        if tokenizer is not None:
            write_tokenizer_files(tokenizer, tmp)
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / STATE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return directory


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
    """Delete all but the newest `keep_last` complete checkpoints (0 = keep all)."""
    if keep_last <= 0:
        return
    for _, path in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(directory: Path) -> dict[str, Any]:
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged pickle raises many kinds of errors
        raise UserError(f"{directory / STATE_FILE}: unreadable trainer state ({exc})") from None
