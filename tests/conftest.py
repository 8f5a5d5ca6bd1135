"""Shared fixtures: where the real data lives, tiny configs, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WIKITEXT2 = SHARED / "wikitext-2"
VOCAB_DIR = SHARED / "vocab"
ZH_DIR = SHARED / "zh"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data missing)")
    return path


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
