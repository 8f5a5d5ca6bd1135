"""The README's two set-up lines, run as a new user would: each in a fresh copy of the repository.

Line 1 (install, then the quickstart) runs in full. Line 2 (install with the test extra, then the
suite) runs with `pytest --collect-only`, so the suite does not run itself recursively; CI runs
line 2 in full, and a test here checks that `.ci/run` holds that very line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def setup_lines() -> list[str]:
    """The ```sh blocks of the README's set-up section, one command line each."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks]


def test_readme_gives_exactly_two_setup_lines():
    lines = setup_lines()
    assert len(lines) == 2, lines
    main_job, tests = lines
    for line in lines:
        assert "\n" not in line, "each set-up step must be one copy-pasteable line"
        assert "python3 -m venv .venv" in line and "pip install torch==" in line
    assert "pip install -e ." in main_job and "bertcli pretrain" in main_job
    assert "pip install -e '.[test]'" in tests and tests.endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_line_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_lines()[1] in ci


def _fresh_copy(tmp_path: Path) -> Path:
    """The repository's files as a clone would have them (tracked + untracked, not ignored)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode().split("\0")
    dest = tmp_path / "bertcli"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _clean_env() -> dict[str, str]:
    """The environment of a new shell: no virtualenv of ours on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return env


def _run_line(line: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    if shutil.which("python3", path=_clean_env()["PATH"]) is None:
        pytest.skip("no python3 on PATH outside the test's virtualenv")
    return subprocess.run(
        ["bash", "-c", "set -e; " + line],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_main_job_line_works_on_a_fresh_copy(tmp_path):
    repo = _fresh_copy(tmp_path)
    proc = _run_line(setup_lines()[0], repo)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checkpoints = list((repo / "runs" / "quickstart" / "checkpoints").glob("step_*"))
    assert checkpoints and (checkpoints[-1] / "model.safetensors").is_file()
    # the installed console script and module entry point answer right after install
    venv_bin = repo / ".venv" / "bin"
    version = subprocess.run(
        [venv_bin / "bertcli", "--version"], capture_output=True, text=True, env=_clean_env()
    )
    assert version.returncode == 0 and version.stdout.startswith("bertcli 0.")
    helped = subprocess.run(
        [venv_bin / "python", "-m", "bertcli", "--help"],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    assert helped.returncode == 0 and "pretrain" in helped.stdout


@pytest.mark.slow
def test_test_line_installs_and_collects_on_a_fresh_copy(tmp_path):
    repo = _fresh_copy(tmp_path)
    line = setup_lines()[1]
    assert line.endswith("python -m pytest -q")
    proc = _run_line(line + " --collect-only", repo)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    collected = re.search(r"(\d+) tests? collected", proc.stdout)
    assert collected and int(collected.group(1)) > 100, proc.stdout[-1000:]


@pytest.mark.slow
def test_wheel_carries_the_sample_corpus_and_completions(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("bertcli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"bertcli/sample/train.txt", "bertcli/sample/valid.txt"} <= names
    for installed in (
        "share/bash-completion/completions/bertcli.bash",
        "share/zsh/site-functions/_bertcli",
        "share/fish/vendor_completions.d/bertcli.fish",
    ):
        assert any(n.endswith(".data/data/" + installed) for n in names), installed
