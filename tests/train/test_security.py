"""Hostile run directories and checkpoints (issue 19): a trainer state never runs code, a sweep
deletes only bertcli's own names, links are never followed, and a config cannot make bertcli
allocate more than the machine has."""

from __future__ import annotations

import json
import os
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


# ---- 2. the run directory: bertcli writes and deletes only its own ---------------------------

USERS_NAMES = [".env.template", ".bashrc.20240101", ".vimrc.original", ".tmp-notes"]


def _plant_users_files(directory: Path) -> dict[str, str]:
    """The names the old sweep deleted, a `.cache.packages/` tree and a project file."""
    planted = {}
    for name in USERS_NAMES:
        (directory / name).write_text(f"user's {name}")
        planted[name] = f"user's {name}"
    (directory / ".cache.packages").mkdir()
    (directory / ".cache.packages" / "numpy.whl").write_text("wheel")
    planted[".cache.packages/numpy.whl"] = "wheel"
    return planted


def _intact(directory: Path, planted: dict[str, str]) -> bool:
    return all((directory / name).read_text() == text for name, text in planted.items())


def test_a_directory_bertcli_did_not_make_is_refused_untouched(
    invoke, corpus, tokenizer_dir, tmp_path
):
    project = tmp_path / "project"
    project.mkdir()
    planted = _plant_users_files(project)
    (project / "thesis.tex").write_text("chapter 1")
    planted["thesis.tex"] = "chapter 1"
    before = sorted(p.name for p in project.iterdir())
    for extra in ((), ("--resume",)):
        result = invoke(*pretrain_args(corpus, tokenizer_dir, project, "--max-steps", "1", *extra))
        line = one_error_line(result)
        assert f"--out {project} is not empty and not a bertcli run directory" in line
        assert _intact(project, planted)
        # nothing written: no lock file, run.json, bert-config.json or metrics.jsonl
        assert sorted(p.name for p in project.iterdir()) == before


def test_a_run_directory_sweeps_only_its_own_names(
    invoke, corpus, tokenizer_dir, trained, tmp_path
):
    from bertcli.train.rundir import RUN_MARKER

    run = _copy_run(trained, tmp_path)
    (run / RUN_MARKER).unlink(missing_ok=True)  # a run directory from before the marker
    planted = _plant_users_files(run)
    # a checkpoints/step_N without trainer_state.pt that is not recognisably ours
    foreign = run / "checkpoints" / "step_00000001"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    (foreign / "notes.md").write_text("my notes")
    linked = run / "checkpoints" / "step_00000009"  # a link to a user's directory
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text("{}")
    linked.symlink_to(tmp_path / "elsewhere")
    # what killed runs of this and earlier versions left: these go
    own_partial = run / "checkpoints" / "step_00000000"
    own_partial.mkdir()
    (own_partial / "config.json").write_text("{}")
    debris = [
        run / ".run.json.bertcli-tmp-0a1b2c3d",
        run / ".tokenizer.k2j4_x9a",
        run / "checkpoints" / ".step_00000005.tmp-deadbeef",
        run / "bert-config.json.tmp",
    ]
    for path in debris:
        path.write_text("debris")

    result = invoke(*pretrain_args(corpus, tokenizer_dir, run, "--max-steps", "3", "--resume"))
    assert result.exit_code == 0, result.output
    assert f"removed {len(debris) + 1} leftovers" in result.stderr
    assert not any(p.exists() for p in debris) and not own_partial.exists()
    assert _intact(run, planted)
    assert (foreign / "notes.md").read_text() == "my notes"
    assert linked.is_symlink() and (tmp_path / "elsewhere" / "config.json").is_file()
    marker = json.loads((run / RUN_MARKER).read_text())
    assert marker["kind"] == "pretrain" and marker["bertcli_version"] and marker["created"]


def test_a_run_of_another_kind_is_refused_in_one_line(trained, tmp_path):
    from bertcli.console import Reporter
    from bertcli.train.rundir import RUN_MARKER, claim_run_dir
    from bertcli.train.runtime import Runtime

    runtime = Runtime(0, 0, 1, "cpu", "fp32")
    assert json.loads((trained / RUN_MARKER).read_text())["kind"] == "pretrain"
    with pytest.raises(UserError, match=f"--out {trained} holds a pretrain run"):
        claim_run_dir(trained, runtime, Reporter(), False, kind="finetune")
    fresh = tmp_path / "ft"
    lock, resume = claim_run_dir(fresh, runtime, Reporter(), False, kind="finetune")
    assert resume is None and json.loads((fresh / RUN_MARKER).read_text())["kind"] == "finetune"
    lock.release()
    with pytest.raises(UserError, match="holds a finetune run"):
        claim_run_dir(fresh, runtime, Reporter(), False)
    (fresh / RUN_MARKER).write_text("[")  # a damaged marker: one line, not a traceback
    with pytest.raises(UserError, match="unreadable run marker"):
        claim_run_dir(fresh, runtime, Reporter(), False, kind="finetune")


def test_a_save_or_a_prune_never_removes_a_directory_holding_a_users_file(tmp_path):
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    model = BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=100, hidden_size=32, num_attention_heads=2)
    )
    state = {"step": 1, "epoch": 0, "step_in_epoch": 1, "optimizer": {}, "scaler": {}}
    root = tmp_path / "checkpoints"
    users = root / ckpt.checkpoint_name(1)
    users.mkdir(parents=True)
    (users / "notes.md").write_text("mine")
    with pytest.raises(UserError, match="holds files bertcli does not write"):
        ckpt.save_checkpoint(users, model, None, state, {})
    assert (users / "notes.md").read_text() == "mine"
    for step in (2, 3):
        ckpt.save_checkpoint(root / ckpt.checkpoint_name(step), model, None, state, {})
    ckpt.save_checkpoint(root / ckpt.checkpoint_name(2), model, None, state, {})  # ours: replaced
    (root / ckpt.checkpoint_name(2) / "keep-me.txt").write_text("mine")
    ckpt.prune_checkpoints(root, keep_last=1)
    assert (root / ckpt.checkpoint_name(2) / "keep-me.txt").read_text() == "mine"
    assert (root / ckpt.checkpoint_name(3)).is_dir()


# ---- 3. fixed names never follow a link --------------------------------------------------------


def test_a_link_at_the_lock_name_leaves_its_target_alone(tmp_path):
    from bertcli.train.lock import LOCK_NAME, acquire_run_lock

    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link") as refused:
        acquire_run_lock(run)
    assert "\n" not in str(refused.value)
    assert target.read_text() == "precious"
    (run / LOCK_NAME).unlink()
    os.link(target, run / LOCK_NAME)  # a hard link: a second name of the same file
    with pytest.raises(UserError, match="hard link"):
        acquire_run_lock(run)
    assert target.read_text() == "precious"


def test_a_pretrain_into_a_run_with_a_planted_lock_link_is_one_line(
    invoke, corpus, tokenizer_dir, trained, tmp_path
):
    from bertcli.train.lock import LOCK_NAME

    run = _copy_run(trained, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (run / LOCK_NAME).unlink()
    (run / LOCK_NAME).symlink_to(target)
    result = invoke(*pretrain_args(corpus, tokenizer_dir, run, "--max-steps", "3", "--resume"))
    assert "is a symbolic link" in one_error_line(result)
    assert target.read_text() == "precious"


def test_metrics_and_config_writers_never_follow_a_link(tmp_path):
    from bertcli.config import BertConfig
    from bertcli.metrics import MetricsWriter, truncate_metrics

    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(target)
    with pytest.raises(UserError, match="symbolic link"):
        MetricsWriter(run, tensorboard=False)
    with pytest.raises(UserError, match="symbolic link"):
        truncate_metrics(run / "metrics.jsonl", 3)
    assert target.read_text() == "precious"

    (run / "bert-config.json.tmp").symlink_to(target)  # the name the old writer used
    (run / "bert-config.json").symlink_to(target)
    BertConfig.from_preset("tiny").save(run / "bert-config.json")
    assert target.read_text() == "precious"
    assert not (run / "bert-config.json").is_symlink()  # the link is replaced, not followed
    assert BertConfig.load(run / "bert-config.json") == BertConfig.from_preset("tiny")


# ---- 4. a config or a header cannot make bertcli allocate what the machine lacks -------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("hidden_dropout_prob", "abc", "hidden_dropout_prob must be a number, got 'abc'"),
        ("pad_token_id", "x", "pad_token_id must be an integer, got 'x'"),
        ("layer_norm_eps", "1e-12", "layer_norm_eps must be a number, got '1e-12'"),
        ("initializer_range", True, "initializer_range must be a number"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_line(invoke, tmp_path, field, value, expected):
    from bertcli.config import BertConfig

    config = {**BertConfig.from_preset("tiny", vocab_size=100).to_dict(), field: value}
    directory = _hf_dir(tmp_path, config)
    result = invoke("export-config", "--from-checkpoint", directory, "--out", tmp_path / "o.json")
    line = one_error_line(result)
    assert expected in line and str(directory / "config.json") in line


def test_the_parameter_estimate_is_exact():
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining
    from bertcli.sizing import parameter_count

    odd = BertConfig(
        vocab_size=123,
        hidden_size=48,
        num_attention_heads=4,
        intermediate_size=70,
        num_hidden_layers=3,
        max_position_embeddings=33,
        type_vocab_size=3,
    )
    for config in (BertConfig.from_preset("tiny", vocab_size=100), odd):
        model = BertForPreTraining(config)
        assert parameter_count(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("field", "value"), [("vocab_size", 10**9), ("num_hidden_layers", 10**8)])
def test_a_config_too_large_for_the_machine_is_refused_before_allocating(
    invoke, corpus, tokenizer_dir, trained, tmp_path, field, value
):
    import resource

    from bertcli.config import BertConfig

    config = {**BertConfig.from_preset("tiny", vocab_size=2000).to_dict(), field: value}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # evaluate builds the model from the file; pretrain also counts gradients and Adam state
    line = one_error_line(
        invoke(
            "evaluate",
            "--checkpoint",
            _hf_dir(tmp_path, config, weights=_state_path(trained).parent),
            "--data-text",
            corpus / "valid.txt",
        )
    )
    assert f"{field} = {value}" in line and "GiB" in line and "available" in line
    result = invoke(
        "pretrain", "--data-text", "--train-data", corpus / "train.txt", "--tokenizer",
        tokenizer_dir, "--config-file", path, "--out", tmp_path / "run", "--max-seq-length",
        "64", "--max-steps", "1", "--device", "cpu",
    )  # fmt: skip
    line = one_error_line(result)
    if field != "vocab_size":  # (a vocab_size the tokenizer does not have is refused first)
        assert f"{field} = {value}" in line and "optimizer state" in line
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    assert grown < 2 * 2**20, f"peak memory grew by {grown} KiB"


def _hf_dir(tmp_path: Path, config: dict, weights: Path | None = None) -> Path:
    """A checkpoint directory whose config.json is `config` (with the files of `weights`)."""
    directory = tmp_path / "ck"
    if weights is not None:
        shutil.copytree(weights, directory)
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_hidden_size_too_large_for_the_machine_is_refused(
    invoke, corpus, tokenizer_dir, tmp_path
):
    result = invoke(
        *pretrain_args(corpus, tokenizer_dir, tmp_path / "run", "--max-steps", "1"),
        "--hidden-size",
        "4000000",
    )
    line = one_error_line(result)
    assert "hidden_size = 4000000" in line and "GiB" in line


def test_a_safetensors_header_length_of_2_62_is_a_damaged_checkpoint(trained, tmp_path):
    import struct

    run = _copy_run(trained, tmp_path)
    directory = _state_path(run).parent
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    reason = ckpt.verify_checkpoint(directory)
    assert reason is not None and "header length 4611686018427387904 is impossible" in reason
    weights.write_bytes(struct.pack("<Q", 2) + b"[]" + data[10:])  # a header that is no index
    assert "not a safetensors tensor index" in ckpt.verify_checkpoint(directory)


# ---- 5. the final save beats SIGTERM; evaluation shows progress ------------------------------


def test_sigterm_during_the_final_evaluation_keeps_the_checkpoint_and_exits_0(
    corpus, tokenizer_dir, tmp_path
):
    import signal
    import subprocess
    import time

    from tests.train.conftest import pretrain_command

    # a long evaluation (one sequence per batch over a large file), so the signal lands in it
    big = tmp_path / "eval.txt"
    big.write_text((corpus / "train.txt").read_text())
    out = tmp_path / "run"
    command = pretrain_command(corpus, tokenizer_dir, out, "--max-steps", "2")
    command += ["--eval-data", str(big), "--eval-batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    final = out / "checkpoints" / ckpt.checkpoint_name(2)
    deadline = time.monotonic() + 600
    try:
        while not (final / ckpt.STATE_FILE).exists():  # saved before the evaluation starts
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "log").read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert "evaluation at step 2 stopped on request" in text
    assert ckpt.verify_checkpoint(final) is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r.get("split") == "eval"]  # no half-evaluation is reported


def test_evaluation_inside_pretrain_prints_progress_off_a_terminal(
    invoke, corpus, tokenizer_dir, tmp_path, monkeypatch
):
    from bertcli import console

    # the plain reporter's 30 s interval, lowered to print a line at every advance
    monkeypatch.setattr(
        console,
        "make_reporter",
        lambda quiet=False: console.PlainReporter(progress=not quiet, every_seconds=0),
    )
    result = invoke(
        *pretrain_args(corpus, tokenizer_dir, tmp_path / "run", "--max-steps", "4"),
        "--eval-data",
        corpus / "valid.txt",
        "--eval-every",
        "2",
        "--log-every",
        "1",
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    evaluating = [i for i, line in enumerate(lines) if line.startswith("Evaluating ")]
    assert evaluating and " batches (" in lines[evaluating[0]]
    # the training display comes back after the mid-run evaluation
    after = [line for line in lines[evaluating[0] :] if line.startswith("Pretraining 3/4")]
    assert after, result.stderr
