"""MFU is reported on a GPU: every train row of metrics.jsonl has a number in (0, 1).

bf16 on a GPU in `bertcli.train.mfu`'s peak table; on any other GPU MFU is None by design (the
peak is never guessed), and this test says so instead of passing.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.config import TrainConfig
from bertcli.model import BertForPreTraining
from bertcli.train.mfu import peak_tflops
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import Trainer
from tests.gpu.conftest import needs_cuda
from tests.gpu.synthetic import SyntheticPretraining, small_config

pytestmark = [pytest.mark.gpu, needs_cuda]


def test_mfu_in_metrics_jsonl(device, tmp_path, record):
    name = torch.cuda.get_device_name(device)
    if peak_tflops(name) is None:
        pytest.skip(f"{name!r} is not in bertcli.train.mfu.PEAK_TFLOPS: MFU is None there")
    torch.manual_seed(0)
    model = BertForPreTraining(small_config()).to(device)
    config = TrainConfig(max_steps=20, batch_size=64, log_every=5, tensorboard=False)
    data = SyntheticPretraining(64 * 20, 128, 4096)
    Trainer(config, model, data, Runtime(0, 0, 1, device, "bf16"), tmp_path).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mfus = [r["mfu"] for r in rows if "split" not in r]
    record("mfu_mini_128x64_trainer", mfus)
    assert len(mfus) == 4
    assert all(m is not None and 0 < m < 1 for m in mfus), mfus
