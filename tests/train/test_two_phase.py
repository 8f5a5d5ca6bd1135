"""The two-phase recipe at tiny size: sequence 128 (20 predictions), then 512 (80) from phase 1.

What carries over is checked against phase 1's own files: the weights always; the optimizer
state and the step count only with --init-optimizer-from; the LR schedule always starts anew.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.model import BertForPreTraining
from bertcli.train.checkpoint import load_trainer_state
from bertcli.train.schedules import learning_rate

MODEL = ["--preset", "tiny", "--hidden-size", "64", "--num-attention-heads", "2"]
MODEL += ["--intermediate-size", "128"]
PHASE1_STEPS, PHASE2_STEPS, PHASE2_LR = 3, 2, 1e-3


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("split") != "eval"]


@pytest.fixture(scope="module")
def phase1(corpus, tokenizer_dir, tmp_path_factory):
    """Phase 1: sequence 128, 20 predictions per sequence."""
    from typer.testing import CliRunner

    from bertcli.cli import app

    out = tmp_path_factory.mktemp("phase1") / "run"
    args = ["pretrain", "--data-text", "--train-data", corpus / "train.txt", *MODEL]
    args += ["--tokenizer", tokenizer_dir, "--max-seq-length", "128"]
    args += ["--max-predictions-per-seq", "20", "--batch-size", "4", "--lr", "5e-3"]
    args += ["--max-steps", str(PHASE1_STEPS), "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out / "checkpoints" / f"step_{PHASE1_STEPS:08d}"


def _phase2(invoke, corpus, phase1, out, *extra):
    """Phase 2: sequence 512, 80 predictions, from the phase-1 checkpoint, a new LR schedule."""
    args = ["pretrain", "--data-text", "--train-data", corpus / "train.txt"]
    args += ["--init-from", phase1, "--max-seq-length", "512", "--max-predictions-per-seq", "80"]
    args += ["--batch-size", "2", "--max-steps", str(PHASE2_STEPS), "--lr", str(PHASE2_LR)]
    args += ["--warmup-steps", "0", "--log-every", "1", "--out", out, *extra]
    return invoke(*args)


def test_phase2_carries_weights_optimizer_and_step_with_the_flag(invoke, corpus, phase1, tmp_path):
    out = tmp_path / "phase2"
    result = _phase2(invoke, corpus, phase1, out, "--init-optimizer-from", phase1.parent.parent)
    assert result.exit_code == 0, result.output

    # the step count continues: phase 2's checkpoints and metrics count on from phase 1's
    end = PHASE1_STEPS + PHASE2_STEPS
    final = out / "checkpoints" / f"step_{end:08d}"
    state = load_trainer_state(final)
    assert state["step"] == end
    rows = _metrics(out)
    assert [row["step"] for row in rows] == list(range(PHASE1_STEPS + 1, end + 1))

    # the LR schedule is new: it starts at the peak (no warmup) and decays over phase 2's steps
    assert rows[0]["lr"] == pytest.approx(PHASE2_LR)
    for k, row in enumerate(rows):
        expected = learning_rate("warmup-annealing", k, PHASE2_LR, PHASE2_STEPS, 0)
        assert row["lr"] == pytest.approx(expected)

    # the optimizer state carried over: AdamW's step count, and second moments that are
    # beta2-weighted continuations of phase 1's (a fresh state would hold only (1-beta2)*g^2)
    before = load_trainer_state(phase1)["optimizer"]["state"]
    after = state["optimizer"]["state"]
    assert set(before) == set(after)
    decayed_then_grown = 0
    for key in before:
        assert int(after[key]["step"]) == int(before[key]["step"]) + PHASE2_STEPS
        assert torch.all(
            after[key]["exp_avg_sq"] >= 0.999**PHASE2_STEPS * before[key]["exp_avg_sq"]
        )
        decayed_then_grown += int(before[key]["exp_avg_sq"].abs().sum() > 0)
    assert decayed_then_grown > 0

    # and this run's options win over the phase-1 optimizer's (its lr was 5e-3)
    groups = state["optimizer"]["param_groups"]
    assert all(group["lr"] == pytest.approx(rows[-1]["lr"]) for group in groups)


def test_phase2_without_the_flag_starts_the_optimizer_and_steps_afresh(
    invoke, corpus, phase1, tmp_path
):
    out = tmp_path / "phase2"
    result = _phase2(invoke, corpus, phase1, out, "--lr", "1e-12", "--weight-decay", "0")
    assert result.exit_code == 0, result.output
    final = out / "checkpoints" / f"step_{PHASE2_STEPS:08d}"
    state = load_trainer_state(final)
    assert state["step"] == PHASE2_STEPS
    assert all(int(s["step"]) == PHASE2_STEPS for s in state["optimizer"]["state"].values())

    # the weights carried over: with a negligible LR, phase 2 ends where phase 1 did
    start = BertForPreTraining.from_pretrained(phase1).state_dict()
    end = BertForPreTraining.from_pretrained(final).state_dict()
    fresh = BertForPreTraining(BertForPreTraining.from_pretrained(phase1).config).state_dict()
    for name, value in start.items():
        torch.testing.assert_close(end[name], value, atol=1e-6, rtol=0)
    assert not torch.allclose(start["mlm_dense.weight"], fresh["mlm_dense.weight"])


def test_phase2_bad_input_is_one_line(invoke, corpus, phase1, tmp_path):
    alone = _phase2(invoke, corpus, phase1, tmp_path / "a")
    assert alone.exit_code == 0, alone.output  # the plain recipe needs no flag
    without_weights = invoke(
        "pretrain", "--data-text", "--train-data", corpus / "train.txt", "--max-steps", "1",
        "--init-optimizer-from", phase1, "--out", tmp_path / "b",
    )  # fmt: skip
    assert without_weights.exit_code == 2 and "needs --init-from" in without_weights.stderr
    other = _phase2(
        invoke, corpus, phase1, tmp_path / "c", "--init-optimizer-from", phase1, "--optimizer",
        "lamb",
    )  # fmt: skip
    assert other.exit_code == 2
    assert "its optimizer is adamw, not --optimizer lamb" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
