"""GPU memory: the peak of a bf16 training step of base at 128 x 64 and 512 x 16 (recorded,
not asserted beyond what must hold), and a real out-of-memory error turned into one line.

The peak is `torch.cuda.max_memory_allocated` over the trainer's own step (fwd + bwd + fused
AdamW, states created), after warm-up. The lower bound that must hold: fp32 weights, gradients
and two AdamW moments, 16 bytes per parameter.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from bertcli.config import BertConfig, TrainConfig
from bertcli.errors import UserError
from bertcli.model import BertForPreTraining
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import Trainer
from tests.gpu.conftest import needs_cuda
from tests.gpu.synthetic import SyntheticPretraining

pytestmark = [pytest.mark.gpu, needs_cuda]

GIB = 2**30


@pytest.fixture(autouse=True)
def released():
    yield
    gc.collect()
    torch.cuda.empty_cache()


def base_trainer(device, tmp_path, seq: int, batch: int, steps: int = 3) -> Trainer:
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_preset("base")).to(device)
    max_pred = 20 if seq <= 128 else 80
    data = SyntheticPretraining(batch * steps, seq, model.config.vocab_size, max_pred=max_pred)
    config = TrainConfig(max_steps=steps, batch_size=batch, log_every=1000, tensorboard=False)
    return Trainer(config, model, data, Runtime(0, 0, 1, device, "bf16"), tmp_path)


@pytest.mark.parametrize("seq,batch", [(128, 64), (512, 16)])
def test_peak_memory_of_a_base_bf16_step(device, tmp_path, record, seq, batch):
    trainer = base_trainer(device, tmp_path, seq, batch)
    data = trainer.train_data
    trainer._train_step([data.batch(0, batch)])  # warm-up: AdamW states, allocator pools
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer._train_step([data.batch(batch, batch)])
    torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    params = trainer.model.num_parameters()
    record(
        f"memory_base_{seq}x{batch}_bf16",
        {"peak_gib": peak / GIB, "parameters": params, "step_s": step_s},
    )
    assert peak >= 16 * params
    assert peak < torch.cuda.get_device_properties(device).total_memory


def test_real_out_of_memory_is_one_line(device, tmp_path):
    trainer = base_trainer(device, tmp_path, seq=512, batch=64, steps=2)
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    # the model is in; leave 1 GiB for the rest: far less than 64 x 512 tokens of activations
    allowed = (torch.cuda.memory_reserved() + GIB) / total
    torch.cuda.set_per_process_memory_fraction(allowed, device)
    try:
        with pytest.raises(UserError) as caught:
            trainer.fit()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("out of GPU memory on cuda:0 at --batch-size 64")
    assert "sequence length 512" in message
