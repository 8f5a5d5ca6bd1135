"""MLM / NSP metrics and where they are written: metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bertcli.atomic import fsync_path, open_own_file, write_text_atomic
from bertcli.errors import UserError


class EvalSums:
    """Running sums over an evaluation, kept on the device (no sync per batch); additive
    across batches and, with one all-reduce, across DDP ranks."""

    FIELDS = (
        "mlm_loss_sum",
        "mlm_correct",
        "num_masked_tokens",
        "nsp_loss_sum",
        "nsp_correct",
        "num_sequences",
    )

    def __init__(self, device: torch.device | str = "cpu"):
        self.values = torch.zeros(len(self.FIELDS), dtype=torch.float64, device=device)

    def add_batch(
        self,
        mlm_logits: torch.Tensor,
        mlm_targets: torch.Tensor,
        nsp_logits: torch.Tensor,
        nsp_labels: torch.Tensor,
    ) -> None:
        """mlm_logits (N, V), mlm_targets (N,) with -100 at empty slots (not counted), nsp
        (B, 2) / (B,)."""
        mlm_logits, nsp_logits = mlm_logits.float(), nsp_logits.float()
        batch = torch.stack(
            [
                F.cross_entropy(mlm_logits, mlm_targets, reduction="sum").double(),
                (mlm_logits.argmax(-1) == mlm_targets).sum().double(),
                mlm_targets.ne(-100).sum().double(),  # cross_entropy ignores -100 too
                F.cross_entropy(nsp_logits, nsp_labels, reduction="sum").double(),
                (nsp_logits.argmax(-1) == nsp_labels).sum().double(),
                torch.tensor(
                    float(nsp_labels.numel()), dtype=torch.float64, device=self.values.device
                ),
            ]
        )
        self.values += batch

    def result(self, nsp: bool = True) -> dict[str, float | int]:
        """mlm_loss, mlm_accuracy, perplexity = exp(mlm_loss), nsp_loss, nsp_accuracy, counts.

        `nsp=False` (an MLM-only model) leaves the NSP keys out: its head is untrained or absent.
        """
        loss_sum, correct, masked, nsp_sum, nsp_correct, sequences = self.values.tolist()
        n, b = max(1.0, masked), max(1.0, sequences)
        mlm_loss = loss_sum / n
        out = {
            "mlm_loss": mlm_loss,
            "mlm_accuracy": correct / n,
            "perplexity": math.exp(min(mlm_loss, 700.0)),
            "nsp_loss": nsp_sum / b,
            "nsp_accuracy": nsp_correct / b,
            "num_sequences": int(sequences),
            "num_masked_tokens": int(masked),
        }
        if not nsp:
            del out["nsp_loss"], out["nsp_accuracy"]
        return out


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, out: Path, tensorboard: bool = True, purge_step: int | None = None):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        # appended under a fixed name: never through a link planted there
        fd = open_own_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.handle = os.fdopen(fd, "a", encoding="utf-8")
        self.recent: list[dict[str, Any]] = []  # the rows of the latest step, for checkpoints
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a resumed run is about to write again
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge_step)

    def write(self, row: dict[str, Any], prefix: str = "train") -> None:
        """Append `row` (it must have a "step") and mirror its numbers to TensorBoard."""
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.recent and self.recent[-1]["step"] != row["step"]:
            self.recent = []
        self.recent.append(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, int | float):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)
            self.tb.flush()

    def rows_at(self, step: int) -> list[dict[str, Any]]:
        """The rows written for `step` (a checkpoint keeps them, to restore a cut file)."""
        return [row for row in self.recent if row["step"] == step]

    def sync(self) -> None:
        """fsync the file: rows up to a checkpoint survive a power loss with it."""
        if self.handle.closed:
            return
        self.handle.flush()
        fsync_path(self.path)

    def close(self) -> None:
        """Close the file and the TensorBoard writer."""
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(
    path: Path, after_step: int, restore: list[dict[str, Any]] | tuple = ()
) -> int:
    """Drop rows past `after_step` (a resumed run rewrites them) and rows that do not parse (a
    line cut by a kill, bytes that are not UTF-8); put back each row of `restore` (a checkpoint's
    own copy of its step's rows) that the file lost. Replaces the file atomically; returns how
    many damaged lines were dropped."""
    if path.is_symlink():  # its target is not ours to read into the run, nor to replace
        raise UserError(f"{path} is a symbolic link; bertcli writes only its own file there")
    if not path.is_file() and not restore:
        return 0
    keep: list[str] = []
    seen: set[tuple[int, Any]] = set()
    damaged = 0
    raw = path.read_bytes() if path.is_file() else b""
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            step = int(row["step"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            damaged += 1
            continue
        if step <= after_step:
            keep.append(json.dumps(row))
            seen.add((step, row.get("split")))
    for row in restore:
        if (int(row["step"]), row.get("split")) not in seen and int(row["step"]) <= after_step:
            keep.append(json.dumps(row))
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))
    return damaged
