"""Reliability of a run directory under kills: the lock, orphaned torchrun workers, signals and
their exit codes, and a kill storm (kill -9 at random moments during saves and prunes) after
which no complete checkpoint is corrupt, the next start leaves no debris, and every resume is
bit-exact against an uninterrupted run.

Everything runs `python -m bertcli` in subprocesses, as a scheduler would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertcli.atomic import is_temporary
from bertcli.train.checkpoint import (
    incomplete_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from bertcli.train.lock import LOCK_NAME
from bertcli.train.rundir import CHECKPOINT_FINALS, RUN_FINALS
from tests.train.conftest import pretrain_command

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(cmd, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.005):
    """Poll until `predicate()` is true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the run ended before the awaited moment"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def steps(out: Path) -> list[int]:
    return [step for step, _ in list_checkpoints(out / "checkpoints")]


def debris(out: Path) -> list[str]:
    """Temporaries and partial checkpoints in the run dir and its checkpoints dir."""
    found = []
    for directory, owned in ((out, RUN_FINALS), (out / "checkpoints", CHECKPOINT_FINALS)):
        if directory.is_dir():
            found += [p.name for p in directory.iterdir() if is_temporary(p.name, owned)]
    return found + [p.name for p in incomplete_checkpoints(out / "checkpoints")]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_killed_run_is_taken_over(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    first = start(
        pretrain_command(corpus, tokenizer_dir, out, "--max-steps", "500", "--save-every", "2"),
        tmp_path / "first.log",
    )
    try:
        wait_for(lambda: steps(out), first)
        for extra in ((), ("--resume",)):  # a second run, or a --resume while it still runs
            second = subprocess.run(
                pretrain_command(corpus, tokenizer_dir, out, "--max-steps", "3", *extra),
                capture_output=True,
                text=True,
                env=ENV,
                timeout=300,
            )
            assert second.returncode == 2, second.stderr
            assert second.stderr.splitlines()[-1].startswith("error: ")
            assert f"in use by another run: PID {first.pid} on host {socket.gethostname()}" in (
                second.stderr
            )
            assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # what killed runs leave: temporaries, and a partial checkpoint from an older version
    (out / "checkpoints" / ".step_99999999.tmp-deadbeef").mkdir()
    (out / "checkpoints" / ".step_99999999.tmp-deadbeef" / "model.safetensors").write_bytes(b"x")
    (out / ".tokenizer.k2j4_x9a").mkdir()
    (out / "checkpoints" / "step_99999998").mkdir()
    (out / "checkpoints" / "step_99999998" / "config.json").write_text("{}")
    planted = len(debris(out))  # ours, and whatever the kill itself left
    resumed = subprocess.run(
        pretrain_command(
            corpus, tokenizer_dir, out, "--max-steps", str(steps(out)[-1] + 1), "--resume"
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of PID {first.pid} on host" in resumed.stderr
    assert f"removed {planted} leftovers of killed runs" in resumed.stderr
    assert debris(out) == []
    assert (out / LOCK_NAME).read_text() == ""  # released on exit: no stale record


@pytest.mark.slow
def test_sigterm_saves_and_exits_0(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(
        pretrain_command(corpus, tokenizer_dir, out, "--max-steps", "500", "--save-every", "3"),
        tmp_path / "log",
    )
    wait_for(lambda: steps(out), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    log = (tmp_path / "log").read_text()
    stopped = int(log.split("stopping at step ")[1].split()[0])
    assert (
        steps(out)[-1] == stopped
        and verify_checkpoint(latest_checkpoint(out / "checkpoints")) is None
    )


def _torchrun(tmp_path):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_killing_the_torchrun_launcher_stops_its_workers(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    launcher = start(
        pretrain_command(
            corpus,
            tokenizer_dir,
            out,
            "--max-steps",
            "2000",
            "--save-every",
            "2",
            launcher=_torchrun(tmp_path),
        ),
        tmp_path / "log",
    )
    wait_for(lambda: steps(out), launcher, poll=0.2)
    workers = [
        w
        for w in _children(launcher.pid)
        if "bertcli" in Path(f"/proc/{w}/cmdline").read_bytes().decode(errors="replace")
    ]
    assert len(workers) == 2
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 120
    while any(alive(w) for w in workers):
        assert time.monotonic() < deadline, "orphaned workers kept training"
        time.sleep(0.2)
    # they stopped cleanly: the lock is free, the newest checkpoint is whole, no debris
    assert (out / LOCK_NAME).read_text() == "", (tmp_path / "log").read_text()[-3000:]
    assert verify_checkpoint(latest_checkpoint(out / "checkpoints")) is None
    assert debris(out) == []


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_and_workers_exit_0(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    launcher = start(
        pretrain_command(
            corpus,
            tokenizer_dir,
            out,
            "--max-steps",
            "2000",
            "--save-every",
            "2",
            launcher=_torchrun(tmp_path),
        ),
        tmp_path / "log",
    )
    wait_for(lambda: steps(out), launcher, poll=0.2)
    launcher.send_signal(signal.SIGTERM)
    code = launcher.wait(timeout=300)
    log = (tmp_path / "log").read_text()
    stopped = int(log.split("stopping at step ")[1].split()[0])
    assert steps(out)[-1] == stopped
    # torchrun itself exits 1 (its SignalException, documented in the README); the workers
    # exited 0 — torchrun reports a worker's non-zero exit as a ChildFailedError
    assert code == 1
    assert "ChildFailedError" not in log and log.count(f"trained to step {stopped}") == 1


STORM_KILLS = 10
STORM_STEPS = 150  # room: every killed run trains a few steps, however fast the machine


@pytest.mark.slow
def test_kill_storm(corpus, tokenizer_dir, tmp_path):
    common = ("--max-steps", str(STORM_STEPS), "--save-every", "1", "--lr", "1e-3")
    reference = tmp_path / "reference"
    done = subprocess.run(
        pretrain_command(corpus, tokenizer_dir, reference, *common),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = {
        step: (path / "model.safetensors").read_bytes()
        for step, path in list_checkpoints(reference / "checkpoints")
    }
    assert sorted(weights) == list(range(1, STORM_STEPS + 1))

    out = tmp_path / "storm"
    rng = random.Random(14)
    kills, debris_after_kills, left = 0, 0, set()
    while kills < STORM_KILLS:
        before = steps(out)
        resume = ("--resume",) if before else ()
        proc = start(
            pretrain_command(corpus, tokenizer_dir, out, *common, "--keep-last", "2", *resume),
            tmp_path / f"run{kills}.log",
        )
        last = before[-1] if before else 0
        wait_for(lambda last=last: steps(out) and steps(out)[-1] > last, proc)
        assert not left & set(debris(out)), "the next start did not sweep a killed run's debris"
        time.sleep(rng.uniform(0.0, 0.1))  # into the next step, save or prune
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        left = set(debris(out))  # temporary names are random: the next run's are new
        debris_after_kills += bool(left)
        for step, path in list_checkpoints(out / "checkpoints"):
            assert verify_checkpoint(path) is None, (step, verify_checkpoint(path))
            # every resumed run is bit-exact: same weights as the uninterrupted run's
            assert (path / "model.safetensors").read_bytes() == weights[step], step
        assert len(steps(out)) <= 3  # --keep-last 2 needs room for 2 + 1 at most

    final = subprocess.run(
        pretrain_command(corpus, tokenizer_dir, out, *common, "--keep-last", "2", "--resume"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert debris(out) == []
    assert steps(out) == [STORM_STEPS - 1, STORM_STEPS]
    assert (latest_checkpoint(out / "checkpoints") / "model.safetensors").read_bytes() == (
        weights[STORM_STEPS]
    )

    def train_rows(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        keys = ("step", "loss", "mlm_loss", "nsp_loss", "lr", "grad_norm")
        return [{k: r[k] for k in keys} for r in rows if "split" not in r]

    assert train_rows(out) == train_rows(reference)  # each step logged once, identical losses
    print(f"kill storm: {kills} kills, debris left by {debris_after_kills}, all swept")
