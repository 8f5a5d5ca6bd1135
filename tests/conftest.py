"""Shared fixtures: where the real data lives, tiny configs, a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WIKITEXT2 = SHARED / "wikitext-2"
VOCAB_DIR = SHARED / "vocab"
ZH_DIR = SHARED / "zh"


# Every skip for missing data carries this text, so the run can count them in one closing line.
DATA_SKIP = "needs ../shared/data"


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory):
    """Runs' token stores go to a temporary shared cache, never the user's ~/.cache/bertcli
    (os.environ, so torchrun's subprocesses see it too)."""
    saved = os.environ.get("BERTCLI_CACHE")
    os.environ["BERTCLI_CACHE"] = str(tmp_path_factory.mktemp("bertcli-cache"))
    yield
    if saved is None:
        os.environ.pop("BERTCLI_CACHE", None)
    else:
        os.environ["BERTCLI_CACHE"] = saved


def require(path: Path) -> Path:
    """`path` if the shared data is there; otherwise skip, counted in the closing summary."""
    if not path.exists():
        pytest.skip(f"{DATA_SKIP}: {path} is missing")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without ../shared/data, a test that failed only by opening a file there is a data skip.

    Tests should call `require`; this catches one that reads a shared path directly, so a clone
    without the data still runs the rest and reports these as skipped, never as silent passes.
    """
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and not SHARED.exists()
        and call.excinfo is not None
        and isinstance(call.excinfo.value, OSError)
        and str(SHARED) in str(call.excinfo.value)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {DATA_SKIP}")


def pytest_terminal_summary(terminalreporter) -> None:
    """One closing line: how many parity tests were skipped for lack of the shared data."""
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if DATA_SKIP in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} parity tests skipped: {SHARED} is missing (the real data they compare "
            "against; README.md § Testing and shared/data/README.md describe it)"
        )


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner):
    """Run the CLI; returns (exit_code, stdout, stderr)."""
    from bertcli.cli import app

    def _invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        return result

    return _invoke


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size)` mounts a tmpfs of that size (root only; skipped elsewhere)."""
    mounts = []

    def mount(size: str):
        if os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
