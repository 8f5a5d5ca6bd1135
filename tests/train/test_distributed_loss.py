"""Two gloo ranks x batch b train exactly like one process x batch 2b (global loss normalisation),
and --compile under torchrun (compiled DDP) saves unprefixed names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertcli.train.checkpoint import latest_checkpoint
from tests.train.conftest import pretrain_command


def pretrain(out: Path, corpus: Path, tokenizer_dir: Path, ranks: int, *extra: str) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc-per-node", str(ranks)]
    command = pretrain_command(
        corpus, tokenizer_dir, out, *extra, launcher=launcher if ranks > 1 else ()
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "split" not in r]


def test_two_ranks_equal_one_process_with_twice_the_batch(corpus, tokenizer_dir, tmp_path):
    """SGD (no Adam normalisation to hide a scale error), no dropout, two accumulated
    micro-batches: ranks hold different masked counts, so only a global normaliser (and a
    working no_sync + all-reduce) gives the single process's parameters and logged losses."""
    common = [
        "--max-steps",
        "2",
        "--batches-per-step",
        "2",
        "--optimizer",
        "sgd",
        "--beta1",
        "0",
        "--lr",
        "0.5",
        "--lr-policy",
        "constant",
        "--warmup-steps",
        "0",
        "--max-grad-norm",
        "0",
        "--save-every",
        "1",
        "--hidden-dropout",
        "0",
        "--attention-dropout",
        "0",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    pretrain(two, corpus, tokenizer_dir, 2, *common, "--batch-size", "4")
    pretrain(one, corpus, tokenizer_dir, 1, *common, "--batch-size", "8")
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys()
    for name, tensor in b.items():
        torch.testing.assert_close(a[name], tensor, atol=1e-5, rtol=0, msg=name)
    first = load_file(str(one / "checkpoints" / "step_00000001" / "model.safetensors"))
    moved = max((b[n] - first[n]).abs().max().item() for n in b)
    assert moved > 1e-3  # the second step really changed the weights
    rows_two, rows_one = train_rows(two), train_rows(one)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2]
    for r2, r1 in zip(rows_two, rows_one):
        # the logged loss is the global batch's (all-reduced), not rank 0's share
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
        assert r2["mlm_loss"] == pytest.approx(r1["mlm_loss"], abs=1e-5)
        assert r2["mfu"] is None  # CPU: never guessed


@pytest.mark.slow
def test_compile_under_torchrun_saves_unprefixed_names(corpus, tokenizer_dir, tmp_path):
    """Compiled DDP on two gloo ranks trains, and the checkpoint has transformers' names."""
    out = tmp_path / "compiled"
    pretrain(out, corpus, tokenizer_dir, 2, "--compile", "--max-steps", "2", "--no-nsp")
    names = weights(out).keys()
    assert not [n for n in names if "_orig_mod" in n or n.startswith("module.")]
    assert "bert.embeddings.word_embeddings.weight" in names
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] == r["loss"] and r["loss"] > 0 for r in rows)  # finite, not NaN
