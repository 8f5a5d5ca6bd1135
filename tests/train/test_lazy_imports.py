"""Training, preprocessing and evaluation run without mwparserfromhell installed.

Only `download wikipedia` parses wikitext; lent GPU images do not have the parser, and
`benchmarks/gpu.sh` must run there. Each command runs in a fresh interpreter whose import
system refuses the package, as an image without it would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.conftest import TINY

BLOCKER = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mwparserfromhell":
            raise ModuleNotFoundError("No module named 'mwparserfromhell' (blocked)")
sys.modules.pop("mwparserfromhell", None)
sys.meta_path.insert(0, Refuse())
from bertcli.cli import app
sys.argv = ["bertcli", *sys.argv[1:]]
app()
assert "mwparserfromhell" not in sys.modules
"""


def run_blocked(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`bertcli ARGS` in a fresh interpreter that cannot import mwparserfromhell."""
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_blocker_blocks():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER.split("from bertcli")[0] + "import mwparserfromhell"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "blocked" in proc.stderr


@pytest.mark.parametrize("command", ["--help", "pretrain --help", "download --help"])
def test_help_without_the_parser(command):
    proc = run_blocked(*command.split())
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_preprocess_pretrain_evaluate_without_the_parser(corpus, tokenizer_dir, tmp_path):
    shards = tmp_path / "shards"
    proc = run_blocked(
        "preprocess",
        "--input", corpus / "train.txt",
        "--tokenizer", tokenizer_dir,
        "--out", shards,
        "--max-seq-length", "64",
        "--dupe-factor", "1",
        "--workers", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "run"
    proc = run_blocked(
        "pretrain",
        "--data-preprocessed",
        "--train-data", shards,
        "--tokenizer", tokenizer_dir,
        "--out", out,
        *TINY,
        "--device", "cpu",
        "--max-steps", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_blocked(
        "evaluate",
        "--checkpoint", out,
        "--data-preprocessed", shards,
        "--batch-size", "8",
        "--max-batches", "1",
        "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mlm_loss"] > 0
