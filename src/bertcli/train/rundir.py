"""One run per run directory: take its lock, sweep what killed runs left, pick the checkpoint to
resume — decided by rank 0 and checked by every rank.

Under torchrun only rank 0 touches the lock and decides anything that depends on files; the
other ranks receive its decisions and check that they see the same files. A rank that cannot see
a file rank 0 wrote stops every rank at once with one line: the run directory must be shared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bertcli.atomic import remove_tree, sweep_temporaries
from bertcli.console import Reporter
from bertcli.errors import UserError
from bertcli.train.checkpoint import (
    STATE_FILE,
    incomplete_checkpoints,
    list_checkpoints,
    newest_valid_checkpoint,
)
from bertcli.train.lock import RunLock, acquire_run_lock, describe
from bertcli.train.runtime import Runtime

_HASH_LIMIT = 64 << 20  # files up to this size are compared by content, larger ones by size


def not_shared(path: Path, rank: int, what: str = "cannot see") -> str:
    """The one line a rank gives when its view of the run directory differs from rank 0's."""
    return (
        f"rank {rank} {what} {path}, which rank 0 wrote: the run directory (--out) must be on a "
        "filesystem shared by all nodes"
    )


def sweep_run_dir(out: Path) -> list[Path]:
    """Remove the temporaries of dead runs and the partial checkpoints older versions' pruning
    left under final names. Only call it while holding the run's lock."""
    removed = sweep_temporaries(out) + sweep_temporaries(out / "checkpoints")
    for name in ("run.json.tmp", "metrics.jsonl.tmp"):  # earlier versions' temporary names
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(out / name)
    for path in incomplete_checkpoints(out / "checkpoints"):
        remove_tree(path)
        removed.append(path)
    return removed


def claim_run_dir(
    out: Path, runtime: Runtime, log: Reporter, resume: bool
) -> tuple[RunLock | None, Path | None]:
    """Lock `out` (rank 0), sweep it, and pick the checkpoint to resume (None = a fresh run);
    every rank gets the same answer or the same error."""
    lock, error, chosen = None, None, None
    if runtime.is_main:
        try:
            lock = acquire_run_lock(out)
            if lock.unsupported:
                log.log(
                    f"warning: {out} is on a filesystem without file locks "
                    f"({lock.unsupported}): nothing stops a second run from writing into it"
                )
            if lock.stale:
                log.log(f"took over the lock of {describe(lock.stale)}: it is no longer running")
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
