"""Where token stores live, shared by every run on a machine, and how runs share them safely.

A store (`token_store.py`) is keyed by the corpus files, the tokenizer and the input format, so
two runs on the same corpus can use the same one: the cache is a directory of stores,
`--cache-dir`, else `$BERTCLI_CACHE`, else `$XDG_CACHE_HOME/bertcli`, else `~/.cache/bertcli`
(as datasets' cache is found), with the stores under `tokens/`.

Two lock files for each store (`.locks/tokens-KEY.build` and `.use` beside the stores; `flock`,
so a killed process releases them):

* building takes the build lock exclusively: a second process asking for the same key waits,
  then opens the store the first one built (the build itself stays atomic: temp dir, rename);
* every process that opens a store holds its use lock shared for as long as it lives;
* pruning (the stores of the same files before they changed) deletes a store only if it can
  take its use lock exclusively, i.e. no other running process is reading it (this process's
  own maps stay valid: Linux keeps a deleted file's pages while they are mapped). A store in
  use is left for a later prune.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

CACHE_ENV = "BERTCLI_CACHE"
_HELD: dict[str, int] = {}  # use-lock path -> descriptor, held until the process exits


def default_cache_dir() -> Path:
    """`$BERTCLI_CACHE`, else `$XDG_CACHE_HOME/bertcli`, else `~/.cache/bertcli`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bertcli"


def token_cache_dir(cache_dir: str | Path | None) -> Path:
    """The directory that holds the token stores for `--cache-dir` (None: the default)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "tokens"


def _lock_path(store: Path, kind: str) -> Path:
    """`.locks/tokens-KEY.build` beside the stores: out of the stores' `tokens-*` names."""
    folder = store.parent / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{store.name}.{kind}"


class BuildLock:
    """Exclusive, blocking: one process builds a key while the others wait for it."""

    def __init__(self, store: Path):
        self.store = store

    def __enter__(self) -> BuildLock:
        self.path = _lock_path(self.store, "build")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def hold_in_use(store: Path) -> None:
    """Mark `store` as read by this process (a shared lock, kept until the process exits)."""
    path = _lock_path(store, "use")
    if str(path) in _HELD:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _HELD[str(path)] = fd


def try_claim_unused(store: Path) -> int | None:
    """An exclusive hold on an unused store's use lock (None if some process reads it)."""
    path = _lock_path(store, "use")
    if str(path) in _HELD:  # this process reads it: drop our hold (our maps stay valid) and
        os.close(_HELD.pop(str(path)))  # see whether any other process holds it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release_claim(store: Path, fd: int) -> None:
    """After deleting a claimed store: drop its lock files and the hold."""
    for kind in ("use", "build"):
        try:
            _lock_path(store, kind).unlink()
        except OSError:
            pass
    os.close(fd)
