"""A small corpus, a trained 2,000-token tokenizer and a tiny model config for training tests."""

from __future__ import annotations

import sys

import pytest

from bertcli.tokenizer import train_tokenizer
from tests.conftest import WIKITEXT2, require

TINY = [
    "--preset",
    "tiny",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "2",
    "--intermediate-size",
    "128",
    "--max-seq-length",
    "64",
    "--batch-size",
    "8",
]


def pretrain_command(corpus, tokenizer_dir, out, *extra, launcher=()) -> list[str]:
    """`python -m bertcli pretrain` on the tiny corpus and model (under `launcher` if given)."""
    prefix = list(launcher) or [sys.executable]
    return [
        *prefix,
        "-m",
        "bertcli",
        "pretrain",
        "--data-text",
        "--train-data",
        str(corpus / "train.txt"),
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(out),
        *TINY,
        "--device",
        "cpu",
        "--log-every",
        "1",
        *extra,
    ]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (root / "train.txt").write_text(text[:120_000])
    (root / "valid.txt").write_text(text[200_000:230_000])
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer("wordpiece", [corpus / "train.txt"], 2000, out)
    return out
