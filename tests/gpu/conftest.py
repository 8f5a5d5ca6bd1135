"""The GPU tier (`pytest -m gpu tests/gpu`): skipped, with one reason, where CUDA is absent.

`benchmarks/gpu.sh` runs it on a lent GPU. Nothing here reads `../shared/data` (a lent machine
may not have it): data is synthetic or written by the test.

Rehearsal: `BERTCLI_GPU_REHEARSE=1` runs the tests on the CPU instead, with `device` = cpu, so
their logic can be checked before a GPU session; the checks that only mean something on CUDA
(sync debug mode, NCCL, memory, MFU) skip themselves there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcli.tokenizer import train_tokenizer

HAS_CUDA = torch.cuda.is_available()
REHEARSE = os.environ.get("BERTCLI_GPU_REHEARSE") == "1"
NO_CUDA = "no CUDA device: tests/gpu runs on a GPU (benchmarks/gpu.sh)"

needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="a CUDA-only check (CPU rehearsal)" if REHEARSE else NO_CUDA
)


@pytest.hookimpl(tryfirst=True)  # before the skipif marks: one reason for the whole directory
def pytest_runtest_setup(item):
    """One skip, raised here, so the summary groups every test under one line."""
    if not HAS_CUDA and not REHEARSE:
        pytest.skip(NO_CUDA)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda", 0) if HAS_CUDA else torch.device("cpu")


@pytest.fixture(scope="session")
def record():
    """`record(key, value)`: a measured figure, merged into `$BERTCLI_GPU_OUT/tests.json`
    (nothing is written when the variable is unset)."""
    out = os.environ.get("BERTCLI_GPU_OUT")

    def _record(key: str, value) -> None:
        if not out:
            return
        path = Path(out) / "tests.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        path.write_text(json.dumps(data, indent=2) + "\n")

    return _record


def synthetic_text(lines: int = 3000, seed: int = 0) -> str:
    """Documents of pseudo-words with a skewed word distribution: something a model can learn,
    written without any corpus file."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(600)]
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf-like
    weights /= weights.sum()
    out = []
    for i in range(lines):
        if i % 12 == 11:
            out.append("")  # a document break
            continue
        sentence = rng.choice(words, rng.integers(6, 24), p=weights)
        out.append(" ".join(sentence) + " .")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu-corpus")
    (root / "train.txt").write_text(synthetic_text())
    (root / "valid.txt").write_text(synthetic_text(300, seed=1))
    return root


@pytest.fixture(scope="session")
def text_tokenizer(text_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu-tok") / "tokenizer"
    train_tokenizer("wordpiece", [text_corpus / "train.txt"], 1000, out)
    return out
