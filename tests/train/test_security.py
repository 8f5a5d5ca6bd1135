"""Hostile run directories and checkpoints (issue 19): a trainer state never runs code, a sweep
deletes only bertcli's own names, links are never followed, and a config cannot make bertcli
allocate more than the machine has."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from bertcli.errors import UserError
from bertcli.train import checkpoint as ckpt
from tests.train.test_trainer import pretrain_args


def one_error_line(result) -> str:
    """The one `error: …` line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(corpus, tokenizer_dir, tmp_path_factory):
    """A finished two-step run (read only: copy it before changing anything)."""
    from typer.testing import CliRunner

    from bertcli.cli import app

    out = tmp_path_factory.mktemp("trained") / "run"
    args = pretrain_args(corpus, tokenizer_dir, out, "--device", "cpu", "--max-steps", "2")
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


class _WritesMarker:
    """Unpickling this runs `open(marker, 'w')`: what a hostile trainer_state.pt does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def _phase2_args(corpus, tokenizer_dir, out: Path, run: Path) -> list:
    """README's phase 2: weights and optimizer state from `run`, which someone else made."""
    return [
        "pretrain", "--data-text", "--train-data", corpus / "train.txt", "--tokenizer",
        tokenizer_dir, "--out", out, "--max-seq-length", "64", "--batch-size", "8", "--device",
        "cpu", "--max-steps", "1", "--init-from", run, "--init-optimizer-from", run,
    ]  # fmt: skip


def _state_path(run: Path) -> Path:
    return ckpt.latest_checkpoint(run / "checkpoints") / ckpt.STATE_FILE


# ---- 1. trainer_state.pt is never unpickled with code ----------------------------------------


def test_a_code_running_trainer_state_is_refused_by_resume_and_init_optimizer_from(
    invoke, corpus, tokenizer_dir, trained, tmp_path
):
    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "marker"
    state = torch.load(_state_path(run), weights_only=True)
    state["optimizer"]["evil"] = _WritesMarker(marker)  # buried deep, as an attacker would
    torch.save(state, _state_path(run))

    resumed = invoke(*pretrain_args(corpus, tokenizer_dir, run, "--max-steps", "3", "--resume"))
    line = one_error_line(resumed)
    assert not marker.exists()
    assert "--resume" in line and "damaged" in line
    assert "asks to import exec" in resumed.stderr  # the skipped-checkpoint line says why

    phase2 = invoke(*_phase2_args(corpus, tokenizer_dir, tmp_path / "phase2", run))
    line = one_error_line(phase2)
    assert not marker.exists()
    assert "refused" in line and "asks to import exec" in line and ckpt.STATE_FILE in line

    # a bare pickle (not torch.save's zip) is refused too
    _state_path(run).write_bytes(pickle.dumps(_WritesMarker(marker)))
    with pytest.raises(UserError):
        ckpt.load_trainer_state(_state_path(run).parent)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({}, "no 'step'"),
        ([1, 2], "list, not a dict"),
        ({"step": "abc"}, "no 'epoch'"),
        (
            {"step": "abc", "epoch": 0, "step_in_epoch": 0, "optimizer": {}, "scaler": {}},
            "'step' must be a non-negative integer, got 'abc'",
        ),
    ],
)
def test_a_trainer_state_of_the_wrong_shape_is_one_line(
    invoke, corpus, tokenizer_dir, trained, tmp_path, content, expected
):
    run = _copy_run(trained, tmp_path)
    torch.save(content, _state_path(run))
    phase2 = invoke(*_phase2_args(corpus, tokenizer_dir, tmp_path / "phase2", run))
    line = one_error_line(phase2)
    assert "not a bertcli trainer state" in line and expected in line
    # verification (what --resume runs first) goes through the same reader
    reason = ckpt.verify_checkpoint(_state_path(run).parent)
    assert reason is not None and expected in reason
    resumed = invoke(*pretrain_args(corpus, tokenizer_dir, run, "--max-steps", "3", "--resume"))
    one_error_line(resumed)


def test_a_checkpoint_saved_with_numpy_arrays_still_resumes(trained, tmp_path):
    """Checkpoints written before the plain RNG format pickled numpy's state tuple."""
    import numpy as np

    run = _copy_run(trained, tmp_path)
    state = torch.load(_state_path(run), weights_only=True)
    np.random.seed(7)
    legacy = np.random.get_state()
    for rng in state["rng_per_rank"]:
        rng["numpy"] = legacy
    torch.save(state, _state_path(run))
    loaded = ckpt.load_trainer_state(_state_path(run).parent)
    np.random.seed(0)
    ckpt.set_rng_state(loaded["rng_per_rank"][0])
    expected = np.random.RandomState()
    expected.set_state(legacy)
    assert np.random.rand() == expected.rand()
    assert ckpt.verify_checkpoint(_state_path(run).parent) is None


def test_new_checkpoints_need_no_allow_list_and_restore_every_rng(trained):
    import random

    import numpy as np

    path = _state_path(trained)
    # plain torch.load(weights_only=True), with nothing allow-listed
    state = torch.load(path, weights_only=True)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    saved = ckpt.rng_state()
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws
    assert state["step"] == 2


def test_torch_s_opt_out_variable_does_not_bring_pickle_back(trained, tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only changes calls that leave weights_only unset."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    run = _copy_run(trained, tmp_path)
    marker = tmp_path / "marker"
    torch.save({"step": _WritesMarker(marker)}, _state_path(run))
    with pytest.raises(UserError, match="refused"):
        ckpt.load_trainer_state(_state_path(run).parent)
    assert not marker.exists()
