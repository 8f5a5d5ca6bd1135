"""No host sync in the training step: `Trainer._train_step` under
`torch.cuda.set_sync_debug_mode("error")`, after warm-up, with AMP, accumulation, unpadding
and the static (B, P) MLM head.

Every blocking CUDA call (`.item()`, `nonzero`, a device-to-host copy, a blocking copy from the
host, `cudaStreamSynchronize`) raises in that mode, so passing means the host queues a step
and moves on. The one exception is by design: fp16 with LAMB, whose GradScaler step reads
`found_inf` on the host (only fused optimizers take it as a tensor); it is not tested here.
"""

from __future__ import annotations

import pytest
import torch

from bertcli.config import TrainConfig
from bertcli.model import BertForPreTraining
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import Trainer
from tests.gpu.conftest import needs_cuda
from tests.gpu.synthetic import SyntheticPretraining, small_config

pytestmark = [pytest.mark.gpu, needs_cuda]

WARMUP, STEPS, ACCUMULATE, BATCH = 3, 5, 2, 8


@pytest.fixture
def sync_errors():
    """Turn the mode on inside the test; always off again (it is process-wide)."""
    torch.cuda.synchronize()
    yield lambda: torch.cuda.set_sync_debug_mode("error")
    torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_sync_debug_mode_catches_a_sync(device, sync_errors):
    """The check itself: a read-back raises, so a silent step below means something."""
    x = torch.ones(4, device=device)
    sync_errors()
    with pytest.raises(RuntimeError, match="synchroniz"):
        x.sum().item()


@pytest.mark.parametrize(
    "precision,optimizer,label_smoothing",
    [("bf16", "adamw", 0.0), ("fp16", "adamw", 0.0), ("bf16", "lamb", 0.1)],
)
def test_no_host_sync_in_the_step(
    device, tmp_path, sync_errors, precision, optimizer, label_smoothing
):
    data = SyntheticPretraining(BATCH * ACCUMULATE * (WARMUP + STEPS), 128, 4096)
    torch.manual_seed(0)
    model = BertForPreTraining(small_config(hidden_dropout_prob=0.1)).to(device)
    config = TrainConfig(
        max_steps=WARMUP + STEPS,
        batch_size=BATCH,
        batches_per_step=ACCUMULATE,
        optimizer=optimizer,
        label_smoothing=label_smoothing,
        log_every=1000,
        tensorboard=False,
    )
    trainer = Trainer(config, model, data, Runtime(0, 0, 1, device, precision), tmp_path)
    assert model.bert.unpad_tokens  # the eager GPU path: unpadded, record from the CPU batch
    # as the DataLoader hands them over on CUDA: pinned CPU batches
    steps = [
        [
            {k: v.pin_memory() for k, v in data.batch(BATCH * (s * ACCUMULATE + m), BATCH).items()}
            for m in range(ACCUMULATE)
        ]
        for s in range(WARMUP + STEPS)
    ]
    assert (steps[0][0]["attention_mask"] == 0).any()  # padding: the record is used
    for micro in steps[:WARMUP]:
        trainer._train_step(micro)
    torch.cuda.synchronize()
    losses = []
    sync_errors()
    for micro in steps[WARMUP:]:
        totals, grad_norm, lr, tokens = trainer._train_step(micro)
        losses.append(totals[0])
    torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(torch.stack(losses)).tolist())
    assert trainer.skipped_steps == 0 or precision == "fp16"  # fp16 may skip while scaling
