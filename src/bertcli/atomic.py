"""Durable, atomic outputs: write under a temporary name, fsync, rename, fsync the directory.

Every command that leaves a file or directory behind (checkpoints, tokenizers, shards, downloads,
run.json, metrics.jsonl) goes through here, so:

- a kill at any moment leaves either the previous complete output or the new complete one under
  the final name, never a half-written one;
- a power loss cannot leave a complete-looking output with empty files: the data and the
  directory entries are fsynced before the rename, the parent directory after it;
- outputs get the modes `mkdir` and `open` would give them under the process umask (temporary
  directories from `mkdtemp` are 0700 and would keep that mode through the rename);
- temporary names carry a marker no user picks (`.NAME.bertcli-tmp-XXXXXXXX`), so the debris of
  a killed process is recognisable and `sweep_temporaries` can remove it once the owner is known
  to be dead. Earlier versions' names (`.NAME.tmp-XXXXXXXX`, `.NAME.XXXXXXXX`, `.NAME.old.…`,
  `.NAME.tmp`) look like a user's `.bashrc.20240101` or `.env.template`; they are swept only when
  the caller names the final names it owns (`legacy_finals`), in a directory proven to be its.

Replacing an existing directory swaps the two names in one `renameat2(RENAME_EXCHANGE)` on Linux,
so the final name never disappears; where that call is missing (other systems, old kernels, some
network filesystems) the old directory is first renamed aside, leaving a window of two renames in
which the final name is absent (the README says so).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bertcli.errors import UserError

TEMP_MARK = ".bertcli-tmp-"
# temp_name's 8 hex digits, or mkdtemp's 8 characters of [a-z0-9_]
_TEMP = re.compile(r"^\..+\.bertcli-tmp-[a-z0-9_]{8}$")
# the names earlier versions used: `.NAME.tmp-XXXXXXXX`, mkdtemp's `.NAME.XXXXXXXX`,
# `.NAME.old.XXXXXXXX` and `.NAME.tmp` files (shards, downloads, metrics, run.json)
_LEGACY_TEMP = re.compile(r"^\.(?P<final>.+?)\.((tmp-|old\.)?[a-z0-9_]{8}|tmp)$")


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """fsync one file or directory (directories: their entries)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the data is what matters
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every directory, deepest first."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(directory)


def apply_umask(root: Path) -> None:
    """Give `root` and everything below it the modes mkdir/open would under the umask."""
    mask = current_umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    for directory, dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                os.chmod(path, file_mode | (path.stat().st_mode & 0o111 & ~mask))
        for name in dirs:
            if not (Path(directory) / name).is_symlink():
                os.chmod(Path(directory) / name, dir_mode)
    os.chmod(root, dir_mode if Path(root).is_dir() else file_mode)


def temp_name(final: Path) -> str:
    """A fresh hidden sibling name for `final`, recognisable as ours."""
    return f".{final.name}{TEMP_MARK}{os.urandom(4).hex()}"


def is_temporary(name: str, legacy_finals: re.Pattern[str] | None = None) -> bool:
    """Whether a directory entry is one of our temporaries; an earlier version's only when
    `legacy_finals` is given and fully matches the final name it was a temporary of."""
    if _TEMP.match(name):
        return True
    legacy = _LEGACY_TEMP.match(name) if legacy_finals is not None else None
    return bool(legacy and legacy_finals.fullmatch(legacy.group("final")))


def durable_replace(src: str | Path, dst: str | Path) -> None:
    """Rename `src` (a file or a directory tree) to `dst` so that it survives a power loss:
    fsync the data first, rename, then fsync the parent directory (and the source's)."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        fsync_tree(src)
    else:
        fsync_path(src)
    os.replace(src, dst)
    fsync_path(dst.parent)
    if src.parent.resolve() != dst.parent.resolve():
        fsync_path(src.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace a small text file atomically and durably, with the umask's mode."""
    path = Path(path)
    tmp = path.with_name(temp_name(path))
    try:
        # os.open with 0o666 lets the umask decide the mode, as open() would
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_own_file(path: str | Path, flags: int) -> int:
    """Open a fixed-name file in a directory others may write to (the run lock, an appended
    log) without following a link planted there: `O_NOFOLLOW`, and a regular file with one
    name, so neither a symlink nor a hard link makes us truncate or append to someone's file.
    Raises UserError naming the path."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{path} is a symbolic link; bertcli writes only its own file there (remove it)"
            ) from None
        raise UserError(f"cannot open {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "has other names (a hard link)" if stat.S_ISREG(info.st_mode) else "not a file"
        raise UserError(f"{path} is {what}; bertcli writes only its own file there (remove it)")
    os.set_blocking(fd, True)
    return fd


_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    global _libc
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_tree(path: Path) -> None:
    """Delete a directory so that a kill midway leaves only recognisable debris: rename it to a
    temporary name first (durably), then delete."""
    doomed = path.with_name(temp_name(path))
    os.replace(path, doomed)
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def sweep_temporaries(directory: Path, legacy_finals: re.Pattern[str] | None = None) -> list[Path]:
    """Remove the temporary files and directories left in `directory` by killed processes (see
    `is_temporary`). Call it only while holding the lock that proves their writers are gone."""
    removed = []
    if not directory.is_dir():
        return removed
    for entry in sorted(directory.iterdir()):
        if is_temporary(entry.name, legacy_finals):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a fresh sibling temp dir; on success it replaces `final` (durably, with the umask's
    modes), on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMP_MARK}", dir=final.parent))
    try:
        yield tmp
        apply_umask(tmp)
        fsync_tree(tmp)
        if final.exists():
            if _exchange(tmp, final):  # tmp now holds the old directory
                fsync_path(final.parent)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # no atomic swap here: the final name is absent between these two renames
            old = final.with_name(temp_name(final))
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_path(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
