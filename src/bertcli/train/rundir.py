"""One run per run directory: take its lock, sweep what killed runs left, pick the checkpoint to
resume — decided by rank 0 and checked by every rank.

What bertcli writes into, and deletes from, a directory (the rules, in order):

1. A run directory is one bertcli made: it holds `.bertcli-run`, a small JSON file written
   atomically when the run claims the directory (kind "pretrain" or "finetune", the bertcli
   version, the creation time). A directory from before that file, holding bertcli's `run.json`
   (a JSON object with "bertcli_version"), is a legacy pretraining run directory and gets the
   marker when claimed.
2. `--out` may be new, empty (or holding only bertcli's own lock and temporaries, and empty
   directories), or a run directory of the same kind. Anything else is refused in one line before anything is written
   there — not even the lock file: so `run.json`, `bert-config.json` and `metrics.jsonl` are
   never overwritten or appended in a directory bertcli did not make. A run directory of
   another kind is refused too ("--out X holds a pretrain run").
3. The sweep (only while holding the lock, so every writer is dead) removes our temporaries,
   `.NAME.bertcli-tmp-XXXXXXXX`, a marker no user picks. Earlier versions' temporary names
   (`.NAME.tmp-XXXXXXXX`, `.NAME.XXXXXXXX`, `.NAME.old.XXXXXXXX`, `.NAME.tmp`) go only when
   NAME is one that bertcli wrote under a temporary name in that directory (`run.json`,
   `metrics.jsonl`, `bert-config.json`, `tokenizer`; `step_N` under `checkpoints/`) — so a
   user's `.bashrc.20240101`, `.env.template` or `.cache.packages/` is never one.
4. A `checkpoints/step_N/` without `trainer_state.pt` (an earlier version's interrupted prune)
   is deleted only if it is recognisably ours (`checkpoint.is_own_checkpoint_dir`: a real
   directory holding only regular files with the names a checkpoint has); one holding anything
   else is left alone, and a save never replaces it.

Under torchrun only rank 0 touches the lock and decides anything that depends on files; the
other ranks receive its decisions and check that they see the same files. A rank that cannot see
a file rank 0 wrote stops every rank at once with one line: the run directory must be shared.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from bertcli import __version__
from bertcli.atomic import is_temporary, remove_tree, sweep_temporaries, write_text_atomic
from bertcli.console import Reporter
from bertcli.errors import UserError
from bertcli.train.checkpoint import (
    STATE_FILE,
    incomplete_checkpoints,
    list_checkpoints,
    newest_valid_checkpoint,
)
from bertcli.train.lock import LOCK_NAME, RunLock, acquire_run_lock, describe
from bertcli.train.runtime import Runtime

_HASH_LIMIT = 64 << 20  # files up to this size are compared by content, larger ones by size
RUN_MARKER = ".bertcli-run"
KINDS = ("pretrain", "finetune")
# the final names bertcli writes in a run directory and in its checkpoints/ (rule 3)
# (the directories made by mkdir, such as cache/ and checkpoints/, never had a temporary name)
RUN_FINALS = re.compile(r"run\.json|metrics\.jsonl|bert-config\.json|tokenizer")
CHECKPOINT_FINALS = re.compile(r"step_\d+")


def not_shared(path: Path, rank: int, what: str = "cannot see") -> str:
    """The one line a rank gives when its view of the run directory differs from rank 0's."""
    return (
        f"rank {rank} {what} {path}, which rank 0 wrote: the run directory (--out) must be on a "
        "filesystem shared by all nodes"
    )


def sweep_run_dir(out: Path) -> list[Path]:
    """Remove the temporaries of dead runs and the partial checkpoints older versions' pruning
    left under final names (rules 3 and 4). Only call it in a run directory, holding its lock."""
    removed = sweep_temporaries(out, RUN_FINALS)
    removed += sweep_temporaries(out / "checkpoints", CHECKPOINT_FINALS)
    for name in ("run.json.tmp", "metrics.jsonl.tmp", "bert-config.json.tmp"):  # older versions'
        path = out / name
        if path.is_symlink() or path.is_file():  # a link itself goes, never its target
            path.unlink()
            removed.append(path)
    for path in incomplete_checkpoints(out / "checkpoints"):
        remove_tree(path)
        removed.append(path)
    return removed


def run_dir_kind(out: Path) -> str | None:
    """The kind of run `out` holds ("pretrain", "finetune"), or None if it is not a bertcli run
    directory (rule 1); a damaged marker is one line."""
    marker = out / RUN_MARKER
    if marker.exists() or marker.is_symlink():
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{marker}: unreadable run marker ({exc})") from None
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in KINDS:
            raise UserError(f"{marker}: not a bertcli run marker (kind {kind!r})")
        return kind
    try:
        legacy = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(legacy, dict) and "bertcli_version" in legacy:
        return "pretrain"  # only pretraining wrote run.json before the marker
    return None


def _is_unclaimed(out: Path) -> bool:
    """New, or empty but for what an interrupted claim of bertcli's own leaves (rule 2)."""
    if not out.exists():
        return True
    return out.is_dir() and all(
        entry.name == LOCK_NAME or is_temporary(entry.name) or _empty_dir(entry)
        for entry in out.iterdir()
    )


def _empty_dir(path: Path) -> bool:
    """An empty real directory (a pre-made `cache/` mount point): nothing there to lose."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_out_dir(out: Path, kind: str = "pretrain") -> bool:
    """Refuse an `--out` bertcli may not write into (rule 2); True if it needs a marker."""
    if _is_unclaimed(out):
        return True
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    found = run_dir_kind(out)
    if found is None:
        raise UserError(
            f"--out {out} is not empty and not a bertcli run directory (no {RUN_MARKER} or "
            "bertcli run.json); give a new or empty directory"
        )
    if found != kind:
        raise UserError(f"--out {out} holds a {found} run; give another --out for {kind}")
    return not (out / RUN_MARKER).exists()


def write_run_marker(out: Path, kind: str) -> dict[str, Any]:
    """`.bertcli-run` (atomically: a link there is replaced, never followed)."""
    record = {
        "kind": kind,
        "bertcli_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(out / RUN_MARKER, json.dumps(record, indent=2) + "\n")
    return record


def claim_run_dir(
    out: Path, runtime: Runtime, log: Reporter, resume: bool, *, kind: str = "pretrain"
) -> tuple[RunLock | None, Path | None]:
    """Refuse a directory that is not ours (see the module's rules), lock `out` (rank 0), mark
    it, sweep it, and pick the checkpoint to resume (None = a fresh run); every rank gets the
    same answer or the same error."""
    lock, error, chosen = None, None, None
    if runtime.is_main:
        try:
            needs_marker = check_out_dir(out, kind)  # before the lock file is created there
            lock = acquire_run_lock(out)
            if lock.unsupported:
                log.log(
                    f"warning: {out} is on a filesystem without file locks "
                    f"({lock.unsupported}): nothing stops a second run from writing into it"
                )
            if lock.stale:
                log.log(f"took over the lock of {describe(lock.stale)}: it is no longer running")
            if needs_marker:
                write_run_marker(out, kind)
            removed = [] if lock.unsupported else sweep_run_dir(out)  # unlocked: not safe
            if removed:
                names = ", ".join(p.name for p in removed[:3]) + (" …" if len(removed) > 3 else "")
                log.log(f"removed {len(removed)} leftovers of killed runs in {out}: {names}")
            chosen = _pick_resume(out, log) if resume else _refuse_existing(out)
        except UserError as exc:
            error = str(exc)
        except BaseException:  # a bug or an interrupt: never keep the lock past this call
            if lock is not None:
                lock.release()
            raise
        if error and lock is not None:
            lock.release()
            lock = None
    error, chosen = runtime.from_main((error, chosen))
    runtime.check_all(error)
    if chosen is None:
        return lock, None
    path = out / "checkpoints" / chosen
    seen = None if (path / STATE_FILE).is_file() else not_shared(path / STATE_FILE, runtime.rank)
    runtime.check_all(seen)
    if runtime.is_main:
        log.log(f"resuming from {path}")
    return lock, path


def _refuse_existing(out: Path) -> None:
    if list_checkpoints(out / "checkpoints"):
        raise UserError(f"--out {out} already holds checkpoints; pass --resume or a new --out")
    return None


def _pick_resume(out: Path, log: Reporter) -> str:
    newest, skipped = newest_valid_checkpoint(out / "checkpoints")
    for path, reason in skipped:
        log.log(f"skipping damaged checkpoint {path} ({reason}); trying the previous one")
    if newest is None:
        if skipped:
            raise UserError(f"--resume: every checkpoint in {out / 'checkpoints'} is damaged")
        raise UserError(f"--resume: no complete checkpoint in {out / 'checkpoints'}")
    return newest.name


def _fingerprint(path: Path) -> str | None:
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > _HASH_LIMIT:
        return f"size {size}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_shared_file(runtime: Runtime, path: Path) -> None:
    """After rank 0 wrote `path`: every rank must see the same file, or all stop with one line."""
    if not runtime.distributed:
        return
    expected = runtime.from_main(_fingerprint(path) if runtime.is_main else None)
    mine = expected if runtime.is_main else _fingerprint(path)
    error = None
    if mine is None:
        error = not_shared(path, runtime.rank)
    elif mine != expected:
        error = not_shared(path, runtime.rank, "sees a different")
    runtime.check_all(error)
