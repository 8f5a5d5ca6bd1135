"""An exclusive lock on a run directory, so one run at a time writes into it.

`fcntl.flock` on `RUN/.bertcli.lock`: the kernel releases it when the holder exits in any way
(kill -9 included), so a lock can never be left held by a dead process. The file records the
holder's host and PID; a record left by a process that is gone (it died without clearing it)
marks a stale lock, which the next run takes over with one info line. The file itself is never
deleted: deleting a flock'ed file lets two processes lock two different inodes.

flock works on local filesystems and on NFSv4 (Linux maps it to a POSIX lock); Lustre needs the
`flock` mount option, and some FUSE filesystems ignore it (the README says so).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

from bertcli.atomic import open_own_file
from bertcli.errors import UserError

LOCK_NAME = ".bertcli.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RunLock:
    """Holds the lock of one run directory until `release()` (or the process's end)."""

    def __init__(self, directory: Path, fd: int, stale: dict | None, unsupported: str = ""):
        self.directory = directory
        self.fd: int | None = fd
        self.stale = stale  # the record of a dead holder this lock took over, if any
        self.unsupported = unsupported  # why this filesystem could not lock ("" = locked)

    def release(self) -> None:
        """Clear the record and unlock (a clean exit leaves no stale record)."""
        if self.fd is None:
            return
        if not self.unsupported:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        record = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return {"pid": "?", "host": "?"}
    return record if isinstance(record, dict) else {"pid": "?", "host": "?"}


def describe(record: dict | None) -> str:
    """'PID 123 on host n01 (since 2026-01-01 10:00:00)' for a lock record."""
    if not record:
        return "another process"
    text = f"PID {record.get('pid', '?')} on host {record.get('host', '?')}"
    if record.get("started"):
        text += f" (since {record['started']})"
    return text


def acquire_run_lock(directory: str | Path) -> RunLock:
    """Lock `directory` (created if needed) or raise UserError naming the holder."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run lock in {directory}: {exc.strerror}") from None
    # a link (or a second name) at the lock's name must not make us truncate its target
    fd = open_own_file(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    if fcntl is None:  # pragma: no cover - no flock: run unlocked
        return RunLock(directory, fd, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            # a filesystem without locks (NFS without lockd, some FUSE): run, but say so
            return RunLock(directory, fd, None, exc.strerror or "no locks")
        holder = _read_record(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(
                f"{directory} is in use by another run: {describe(holder)}; wait for it to end "
                "or stop it, or choose another --out"
            ) from None
        raise UserError(f"cannot lock {directory / LOCK_NAME}: {exc.strerror}") from None
    stale = _read_record(fd)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    return RunLock(directory, fd, stale)
