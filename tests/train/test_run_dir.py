"""The pieces that keep a run directory sane: its lock, the metrics repair on resume, checkpoint
verification, the resume guards' wording and the plain progress lines a cluster log gets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import zipfile

import pytest

from bertcli.console import PlainReporter
from bertcli.errors import UserError
from bertcli.metrics import truncate_metrics
from bertcli.train.checkpoint import resume_changes, verify_checkpoint
from bertcli.train.lock import LOCK_NAME, acquire_run_lock

HOLD = (
    "import sys, time\n"
    "from bertcli.train.lock import acquire_run_lock\n"
    "lock = acquire_run_lock(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(UserError) as refused:
            acquire_run_lock(run)
        message = str(refused.value)
        assert f"PID {holder.pid} on host {socket.gethostname()}" in message
        assert str(run) in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = acquire_run_lock(run)  # the kernel dropped the dead holder's flock
    assert lock.stale["pid"] == holder.pid  # its record marks the lock as taken over
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(UserError):  # exclusive within one process too
        acquire_run_lock(run)
    lock.release()
    again = acquire_run_lock(run)
    assert again.stale is None  # a clean release leaves no stale record
    again.release()


def test_a_filesystem_without_locks_runs_unlocked_and_says_so(tmp_path, monkeypatch):
    import errno

    from bertcli.console import Reporter
    from bertcli.train import lock as lock_module
    from bertcli.train.rundir import claim_run_dir
    from bertcli.train.runtime import Runtime

    def no_locks(fd, operation):  # what NFS without lockd answers
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    debris = tmp_path / "run" / ".step_00000001.bertcli-tmp-00000000"
    debris.mkdir(parents=True)

    class Lines(Reporter):
        def __init__(self):
            self.lines = []

        def log(self, message):
            self.lines.append(message)

    log = Lines()
    runtime = Runtime(0, 0, 1, "cpu", "fp32")
    held, resume = claim_run_dir(tmp_path / "run", runtime, log, resume=False)
    assert resume is None and held.unsupported
    assert "without file locks (No locks available)" in log.lines[0]
    assert debris.exists()  # unlocked, another run's temporaries may be alive: not swept
    held.release()


def test_metrics_repair_drops_damaged_lines_and_restores_the_checkpoint_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 10.0 - s} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in rows[:2]).encode()
    text += b'{"step": 2, "split": "eval", "mlm_loss": 1.5\xff\xfe}\n'  # not UTF-8
    text += json.dumps(rows[2]).encode()[:9]  # step 3 cut mid-line by a power loss
    path.write_bytes(text)
    damaged = truncate_metrics(path, 3, [rows[2], {"step": 3, "split": "eval", "mlm_loss": 1.0}])
    assert damaged == 2
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert got == rows + [{"step": 3, "split": "eval", "mlm_loss": 1.0}]
    truncate_metrics(path, 2)  # rows past the checkpoint go; nothing is duplicated
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]


def test_resume_changes_name_each_guarded_setting():
    saved = {"batch_size": 16, "optimizer": "adamw", "train_data": ["/a"], "log_every": 1}
    now = {"batch_size": 32, "optimizer": "sgd", "train_data": ["/a", "/b"], "log_every": 5}
    assert resume_changes(saved, now) == [
        "--batch-size 16 -> 32",
        "--train-data /a -> /a,/b",
        "--optimizer adamw -> sgd",
    ]
    assert resume_changes(saved, {**saved, "log_every": 7, "max_steps": 99}) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining
    from bertcli.train.checkpoint import rng_state, save_checkpoint

    model = BertForPreTraining(
        BertConfig.from_preset("tiny", vocab_size=100, hidden_size=32, num_attention_heads=2)
    )
    path = tmp_path_factory.mktemp("ck") / "step_00000001"
    state = {  # the shape Trainer saves (verification checks it), plus bulk to damage
        "step": 1,
        "epoch": 0,
        "step_in_epoch": 1,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "rng_per_rank": [rng_state()],
        "blob": list(range(1000)),
    }
    return save_checkpoint(path, model, None, state, {"step": 1})


@pytest.mark.parametrize("damage", ["truncate_weights", "empty_weights", "flip_state", "no_json"])
def test_verify_checkpoint_finds_damage(checkpoint, tmp_path, damage):
    import shutil

    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    assert verify_checkpoint(copy) is None
    weights, state = copy / "model.safetensors", copy / "trainer_state.pt"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "empty_weights":  # what a power loss without fsync leaves
        weights.write_bytes(b"")
    elif damage == "flip_state":
        with zipfile.ZipFile(state) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        raw = bytearray(state.read_bytes())
        at = info.header_offset  # the local header gives the data's start (name + extra lengths)
        start = at + 30 + int.from_bytes(raw[at + 26 : at + 28], "little")
        start += int.from_bytes(raw[at + 28 : at + 30], "little")
        raw[start + info.compress_size // 2] ^= 0xFF  # one flipped byte inside the data
        state.write_bytes(bytes(raw))
    else:
        (copy / "config.json").write_text("{")
    assert verify_checkpoint(copy) is not None


def test_plain_lines_carry_step_total_fields_rate_and_eta(capsys):
    reporter = PlainReporter(every_seconds=3600)
    reporter.start("Pretraining", total=100, unit="steps", completed=40)  # resumed at 40
    for _ in range(10):
        reporter.advance(1)
    assert capsys.readouterr().err == ""  # periodic lines wait for their interval
    reporter.status(loss=7.25, mlm_loss=6.5, nsp_loss=0.75, lr=1e-4, **{"tok/s": 1234})
    line = capsys.readouterr().err.strip()
    assert line.startswith("Pretraining 50/100 steps (50%)  loss=7.25  mlm_loss=6.5")
    assert "nsp_loss=0.75" in line and "lr=0.0001" in line and "tok/s=1234" in line
    rate = float(line.split("  ")[-2].split()[0].replace(",", ""))
    eta = line.split("eta ")[1]
    h, m, s = (int(x) for x in eta.split(":"))
    assert abs((h * 3600 + m * 60 + s) - 50 / rate) <= 1  # 50 steps left at the measured rate
    reporter.start("Tokenizing", total=None, unit="lines")
    reporter.every_seconds = 0
    reporter.advance(500)
    assert capsys.readouterr().err.startswith("Tokenizing 500 lines")
    reporter.advance(10, **{"pages/s": 12.5})  # fields given to advance reach the plain line
    assert "pages/s=12.5" in capsys.readouterr().err
    quiet = PlainReporter(progress=False, every_seconds=0)
    quiet.start("x", total=3)
    quiet.advance(3)
    quiet.status(loss=1.0)
    assert capsys.readouterr().err == ""
