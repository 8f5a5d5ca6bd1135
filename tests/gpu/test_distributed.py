"""DDP on the GPU: the trainer's distributed branch over NCCL, and torchrun's save/resume.

A lent machine has one GPU, and NCCL refuses two ranks on one device, so:
* the trainer runs its DDP branch (DDP wrapper, `no_sync` accumulation, all-reduced masked
  counts and logged rows, gathered RNG states at save) in a real NCCL process group of one
  rank, and must log the losses of the plain single-process run;
* `torchrun --nproc-per-node N` (N = the GPUs here, at most 2) trains, saves at step 4 and
  resumes from it; the resumed losses continue the uninterrupted run's to 1% (GPU kernels with
  atomics are not bit-exact, so exact equality is the CPU tests' claim, not this one's).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from bertcli.config import TrainConfig
from bertcli.model import BertForPreTraining
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import Trainer
from tests.gpu.synthetic import SyntheticPretraining, small_config
from tests.train.conftest import TINY

pytestmark = pytest.mark.gpu


class GroupOfOne(Runtime):
    """A one-rank process group that the trainer treats as distributed."""

    @property
    def distributed(self) -> bool:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_losses(runtime: Runtime, out) -> list[float]:
    torch.manual_seed(0)
    model = BertForPreTraining(small_config()).to(runtime.device)
    data = SyntheticPretraining(8 * 2 * 6, 128, 4096)
    config = TrainConfig(
        max_steps=6, batch_size=8, batches_per_step=2, lr=1e-3, log_every=1, tensorboard=False
    )
    trainer = Trainer(config, model, data, runtime, out)
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def test_trainer_ddp_branch_over_nccl_matches_one_process(device, tmp_path):
    precision = "bf16"
    plain = fit_losses(Runtime(0, 0, 1, device, precision), tmp_path / "plain")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        grouped = fit_losses(GroupOfOne(0, 0, 1, device, precision), tmp_path / "ddp")
    finally:
        dist.destroy_process_group()
    assert len(grouped) == len(plain) == 6
    assert grouped == pytest.approx(plain, rel=1e-3)
    assert (tmp_path / "ddp" / "checkpoints" / "step_00000006").is_dir()


def torchrun(corpus, tokenizer, out, device, *extra) -> subprocess.CompletedProcess:
    nproc = max(1, min(2, torch.cuda.device_count()))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(nproc), "-m", "bertcli", "pretrain", "--data-text",
        "--train-data", str(corpus / "train.txt"), "--tokenizer", str(tokenizer),
        "--out", str(out), *TINY, "--device", device.type, "--precision", "bf16",
        "--log-every", "1", "--max-steps", "8", "--save-every", "4", "--lr", "1e-3", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


def test_torchrun_trains_saves_and_resumes(device, text_corpus, text_tokenizer, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun(text_corpus, text_tokenizer, whole, device)
    expected = train_losses(whole)
    assert sorted(expected) == list(range(1, 9))
    # what a kill right after the step-4 save leaves behind
    (cut / "checkpoints").mkdir(parents=True)
    step4 = whole / "checkpoints" / "step_00000004"
    shutil.copytree(step4, cut / "checkpoints" / step4.name)
    rows = (whole / "metrics.jsonl").read_text().splitlines()[:4]
    (cut / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    torchrun(text_corpus, text_tokenizer, cut, device, "--resume")
    got = train_losses(cut)
    assert sorted(got) == list(range(1, 9))
    for step in range(5, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-2), (step, got, expected)
    run = json.loads((cut / "run.json").read_text())
    assert run["precision"] == "bf16" and run["device"].startswith(device.type)
