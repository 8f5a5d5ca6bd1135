"""The one exception type the CLI turns into a single line on stderr and exit code 2, and the
translation of OS errors (a full disk above all) into it.

Libraries wrap a full disk differently: `OSError(ENOSPC)` from Python, `SafetensorError("... No
space left on device (os error 28)")`, h5py's `RuntimeError("... errno = 28 ...")`, tokenizers'
bare `Exception("No space left on device (os error 28)")`, and torch.save's
`RuntimeError("... unexpected pos ...")` with no errno at all. `writing()` recognises them all
(the last by the free space left after the failure) and names the path and the space needed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input a user can fix: a missing file, a wrong flag value, a mismatched checkpoint.

    The message is shown as-is, so it should name the flag, file or field at fault.
    """


_FULL_DISK_WORDS = (
    "No space left on device",
    "os error 28",
    "errno = 28",
    "Disk quota exceeded",
    "os error 122",
    "errno = 122",
)
_WORKER_PREFIX = "Caught UserError in DataLoader worker"
_ORIGINAL = "bertcli.errors.UserError: "
# what a failed write reports; other errors (a read, a bad gzip stream) are not the writer's
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}
MIN_FREE = 1 << 20  # below this, a failed write with no errno is blamed on the disk


def user_message(exc: UserError) -> str:
    """The message to show; a UserError re-raised by a DataLoader worker carries the original
    one as the last line of a traceback, which is all the user needs."""
    text = str(exc)
    if text.startswith(_WORKER_PREFIX) and _ORIGINAL in text:
        return text.rsplit(_ORIGINAL, 1)[1].strip()
    return text


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, raw or wrapped in a library's message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(word in str(exc) for word in _FULL_DISK_WORDS)


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem that holds `path`."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: int | float) -> str:
    """1,536 -> '1.5 kB' (decimal units, as df -H and file managers show them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class DiskFullError(UserError):
    """A full disk: what was written where, how much it needs, and what is free.

    The free space is measured when the message is shown, after the failed write's temporary
    files are gone, so it is what the user has to work with.
    """

    def __init__(self, path: str | Path, needed: int | None = None, what: str = ""):
        super().__init__(path, needed, what)
        self.path, self.needed, self.what = path, needed, what

    def __str__(self) -> str:
        free = free_bytes(self.path)
        need = f"{self.what or 'it'} needs about {human_bytes(self.needed)}" if self.needed else ""
        have = f"{human_bytes(free)} free there" if free is not None else ""
        detail = "; ".join(x for x in (need, have) if x)
        return (
            f"no space left on device writing {self.path}"
            + (f" ({detail})" if detail else "")
            + "; free some space or write to another disk"
        )


def disk_full(path: str | Path, needed: int | None = None, what: str = "") -> UserError:
    """The one line for a full disk (see DiskFullError)."""
    return DiskFullError(path, needed, what)


def check_space(path: str | Path, needed: int, what: str = "") -> None:
    """Refuse before writing when the filesystem holding `path` cannot take `needed` more bytes."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise disk_full(path, needed, what)


def os_error(
    exc: BaseException, path: str | Path | None = None, needed: int | None = None, what: str = ""
) -> UserError | None:
    """The one line for an OS-level failure while writing `path`, or None if it is not one."""
    if is_disk_full(exc):
        return disk_full(getattr(exc, "filename", None) or path or "?", needed, what)
    if path is not None and isinstance(exc, (OSError, RuntimeError)):
        free = free_bytes(path)
        if free is not None and free < max(needed or 0, MIN_FREE):
            return disk_full(path, needed, what)  # torch.save reports ENOSPC without errno
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        where = exc.filename or path
        reason = exc.strerror or str(exc)
        return UserError(f"{reason}: {where}" if where else reason)  # as the CLI says others
    return None


def unhandled_message(exc: BaseException) -> str | None:
    """One line for an OS error that reached the CLI unnamed (None: a bug, keep the traceback)."""
    if is_disk_full(exc):
        where = getattr(exc, "filename", None)
        return str(disk_full(where)) if where else f"no space left on device ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return None


@contextmanager
def writing(path: str | Path, needed: int | None = None, what: str = "") -> Iterator[None]:
    """Turn a failed write under `path` (an OSError or a library's wrapped form) into a
    UserError naming the path and the space needed; anything else passes through."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        error = os_error(exc, path, needed, what)
        if error is None:
            raise
        raise error from exc
