"""torchrun with 2 CPU processes (gloo): runs, logs each step once, saves once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bertcli.train.checkpoint import latest_checkpoint
from tests.train.conftest import pretrain_command

# two gloo ranks on this machine
TORCHRUN_2 = (
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
)


def test_torchrun_two_processes(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "ddp"
    extra = ["--eval-data", str(corpus / "valid.txt"), "--max-steps", "6"]
    extra += ["--batches-per-step", "2", "--save-every", "3"]
    command = pretrain_command(corpus, tokenizer_dir, out, *extra, launcher=TORCHRUN_2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    if proc.returncode:  # the whole log, inside the test's own temp dir
        (tmp_path / "torchrun.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, f"{tmp_path / 'torchrun.stderr'}: {proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in rows if "split" not in r]
    assert train == [1, 2, 3, 4, 5, 6]  # each step logged once, by rank 0 only
    assert len([r for r in rows if r.get("split") == "eval"]) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert len(run["device_names"]) == 2 and run["result"]["global_batch"] == 32  # issue 21
    assert latest_checkpoint(out / "checkpoints").name == "step_00000006"
    assert "| world size | 2 (2 x CPU" in (out / "checkpoints/step_00000006/README.md").read_text()
    assert proc.stdout.count("trained to step 6") == 1


def test_torchrun_resume_is_exact(corpus, tokenizer_dir, tmp_path):
    """Two gloo ranks with dropout: resuming from step 4 reproduces steps 5..8 exactly."""
    import shutil

    def run(out, *extra):
        command = pretrain_command(
            corpus,
            tokenizer_dir,
            out,
            *("--max-steps", "8", "--save-every", "4", "--lr", "1e-3", *extra),
            launcher=TORCHRUN_2,
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
        log = out.parent / f"{out.name}.stderr"  # inside the test's own temp dir
        if proc.returncode:
            log.write_text(proc.stderr)
        assert proc.returncode == 0, f"{log}: {proc.stderr[-3000:]}"

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(whole)
    # the state a kill right after the step-4 save leaves behind
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copy(whole / ".bertcli-run", cut / ".bertcli-run")  # a run directory, not a stranger's
    shutil.copytree(whole / "checkpoints" / "step_00000004", cut / "checkpoints" / "step_00000004")
    rows = (whole / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(rows[:4]) + "\n")
    run(cut, "--resume")
    expected = [json.loads(r) for r in (whole / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(r) for r in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 9))
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]
