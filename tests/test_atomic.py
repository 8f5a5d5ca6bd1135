"""Durable, atomic outputs: umask modes, fsync around each rename, the directory swap, debris."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from bertcli import atomic
from bertcli.atomic import (
    atomic_directory,
    durable_replace,
    is_temporary,
    remove_tree,
    sweep_temporaries,
    write_text_atomic,
)


@pytest.fixture
def umask():
    """Set a umask for one test, restored afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_get_the_umask_modes_not_mkdtemps(tmp_path, umask, mask):
    umask(mask)
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        fd = os.open(tmp / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600)  # as some writers do
        os.close(fd)
    assert _mode(final) == 0o777 & ~mask  # mkdtemp made it 0700
    assert _mode(final / "sub") == 0o777 & ~mask
    assert _mode(final / "sub" / "a.txt") == 0o666 & ~mask
    assert _mode(final / "private.bin") == 0o666 & ~mask
    write_text_atomic(tmp_path / "run.json", "{}\n")
    assert _mode(tmp_path / "run.json") == 0o666 & ~mask
    assert atomic.current_umask() == mask


def test_checkpoint_files_are_readable_by_the_group(tmp_path, umask):
    """The reported case: model.safetensors was 0600 and the directory 0700."""
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining
    from bertcli.train.checkpoint import save_checkpoint

    umask(0o022)
    model = BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=100, hidden_size=32, num_attention_heads=2)
    )
    path = save_checkpoint(tmp_path / "step_00000001", model, None, {"step": 1}, {"step": 1})
    assert _mode(path) == 0o755
    for name in ("model.safetensors", "config.json", "trainer_state.pt"):
        assert _mode(path / name) == 0o644, name


class _Events:
    """Records fsyncs (by path) and renames, in order, around the real calls."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst):
            self.events.append(("rename", str(dst)))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, kind: str, path: Path) -> int:
        return self.events.index((kind, str(path)))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_files_and_directories_are_fsynced_around_each_rename(tmp_path, monkeypatch):
    events = _Events(monkeypatch)
    src = tmp_path / ".x.tmp-1"
    src.write_text("data")
    durable_replace(src, tmp_path / "x")
    assert events.index("fsync", src) < events.index("rename", tmp_path / "x")
    assert events.index("rename", tmp_path / "x") < events.index("fsync", tmp_path)

    final = tmp_path / "d"
    with atomic_directory(final) as tmp:
        (tmp / "f").write_text("f")
    names = [e for e in events.events if e[0] == "fsync"]
    assert ("fsync", str(tmp / "f")) in names and ("fsync", str(tmp)) in names
    assert names[-1] == ("fsync", str(tmp_path))  # the new entry itself is durable


def test_replacing_a_directory_swaps_in_one_step(tmp_path, monkeypatch):
    final = tmp_path / "tok"
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("old")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    with atomic_directory(final) as tmp:
        (tmp / "v").write_text("new")
    assert (final / "v").read_text() == "new"
    assert list(tmp_path.iterdir()) == [final]  # the old copy is gone, no debris
    if sys.platform.startswith("linux"):
        assert renames == []  # renameat2(RENAME_EXCHANGE): the final name never went missing


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_renames_before_deleting(tmp_path, monkeypatch):
    victim = tmp_path / "step_00000002"
    victim.mkdir()
    (victim / "config.json").write_text("{}")
    (victim / "trainer_state.pt").write_text("x")

    def killed(path, ignore_errors=False):
        (Path(path) / "trainer_state.pt").unlink()  # the kill lands half-way through the delete
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_tree(victim)
    assert not victim.exists()  # never a partial checkpoint under its final name
    (debris,) = tmp_path.iterdir()
    assert is_temporary(debris.name)
    monkeypatch.undo()
    assert sweep_temporaries(tmp_path) == [debris]
    assert list(tmp_path.iterdir()) == []


def test_temporaries_are_recognised_and_nothing_else(tmp_path):
    import re

    ours = [".step_00000020.bertcli-tmp-1a2b3c4d", ".lower_case.bertcli-tmp-k2j4_x9a"]
    older = [
        ".step_00000009.k2j4_x9a",
        ".step_00000008.old.abcd1234",
        ".step_00000007.tmp-00ff00ff",
        ".metrics.jsonl.tmp",
    ]
    # a user's names that the older patterns matched: never temporaries of a name we own
    users = [".env.template", ".bashrc.20240101", ".vimrc.original", ".tmp-notes"]
    kept = ["step_00000020", ".bertcli.lock", "metrics.jsonl", ".hidden", "cache", *users]
    for name in ours + older + kept:
        (tmp_path / name).mkdir() if name.startswith(".step") else (tmp_path / name).touch()
    (tmp_path / ".cache.packages").mkdir()
    (tmp_path / ".cache.packages" / "wheel.whl").touch()
    assert {p.name for p in sweep_temporaries(tmp_path)} == set(ours)  # the new marker only
    owned = re.compile(r"step_\d+|metrics\.jsonl")
    assert {p.name for p in sweep_temporaries(tmp_path, owned)} == set(older)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".cache.packages"])
    assert (tmp_path / ".cache.packages" / "wheel.whl").is_file()
