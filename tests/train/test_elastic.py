"""Elastic resume: a run of 2 ranks x 8 continues on 1 rank x 16 (and back) with exactly the
sample sequence, and so the per-step losses, of the uninterrupted run (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.train.conftest import pretrain_command
from tests.train.test_distributed import TORCHRUN_2
from tests.train.test_trainer import pretrain_args

# dropout off: the dropout streams are per rank, so they cannot continue on another split
EXACT = ["--max-steps", "6", "--save-every", "3", "--lr", "1e-3"]
EXACT += ["--hidden-dropout", "0", "--attention-dropout", "0"]
SPLITS = {"2x8": (TORCHRUN_2, "8"), "1x16": ((), "16")}


def _run(corpus, tokenizer_dir, out: Path, split: str, *extra) -> subprocess.CompletedProcess:
    launcher, batch = SPLITS[split]
    command = pretrain_command(
        corpus, tokenizer_dir, out, *EXACT, "--batch-size", batch, *extra, launcher=launcher
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    log = out.parent / f"{out.name}.stderr"  # inside the test's own temp dir
    if proc.returncode:
        log.write_text(proc.stderr)
    assert proc.returncode == 0, f"{log}: {proc.stderr[-3000:]}"
    return proc


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


def _cut_at_step_3(whole: Path, cut: Path) -> None:
    """The state a kill right after the step-3 save leaves behind."""
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / "run.json", cut / "run.json")  # a run directory, not a stranger's
    name = "step_00000003"
    shutil.copytree(whole / "checkpoints" / name, cut / "checkpoints" / name)
    rows = (whole / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(rows[:3]) + "\n")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tokenizer_dir, tmp_path_factory):
    """Both splits of the same global batch of 16, run to step 6 without a stop."""
    root = tmp_path_factory.mktemp("elastic")
    runs = {}
    for split in SPLITS:
        runs[split] = root / split
        _run(corpus, tokenizer_dir, runs[split], split)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [("2x8", "1x16"), ("1x16", "2x8")])
def test_an_elastic_resume_continues_the_uninterrupted_losses(
    corpus, tokenizer_dir, uninterrupted, tmp_path, before, after
):
    whole = uninterrupted[before]
    cut = tmp_path / "cut"
    _cut_at_step_3(whole, cut)
    proc = _run(corpus, tokenizer_dir, cut, after, "--resume")
    assert "the global batch of 16 sequences is split anew" in proc.stderr
    assert "allow-changes" not in proc.stderr
    expected, got = _losses(whole), _losses(cut)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in (4, 5, 6):
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
    state = json.loads((cut / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert state["step"] == 6


@pytest.mark.slow
def test_the_two_splits_of_one_global_batch_train_alike(uninterrupted):
    """The premise: 2 ranks x 8 and 1 rank x 16 see the same samples at every step."""
    two, one = _losses(uninterrupted["2x8"]), _losses(uninterrupted["1x16"])
    assert all(abs(two[s] - one[s]) < 1e-5 for s in range(1, 7)), (two, one)


@pytest.mark.slow
def test_a_changed_global_batch_keeps_the_guard(
    invoke, corpus, tokenizer_dir, uninterrupted, tmp_path
):
    cut = tmp_path / "cut"
    _cut_at_step_3(uninterrupted["2x8"], cut)
    result = invoke(
        *pretrain_args(corpus, tokenizer_dir, cut, *EXACT, "--batch-size", "8", "--resume")
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --resume: world size 2 -> 1") and "--allow-changes" in line
