"""`--compile` on CUDA: the trainer's call of the model traces with 0 graph breaks under bf16
autocast, and the compiled trainer logs the eager trainer's losses.

Compiled, the trainer runs the padded layout (static shapes); eager, the unpadded one. Both
compute the same function of the real tokens, so with dropout off their losses agree to bf16's
tolerance (2e-2 relative, as in test_parity), step by step.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.config import TrainConfig
from bertcli.model import BertForPreTraining
from bertcli.train.kernels import compile_problem
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import Trainer
from tests.gpu.synthetic import SyntheticPretraining, small_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def fresh_dynamo(device):
    problem = compile_problem(device)
    if problem:
        pytest.skip(problem)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_zero_graph_breaks(device):
    data = SyntheticPretraining(8, 128, 4096)
    b = {k: v.to(device) for k, v in data.batch(0, 8).items()}
    model = BertForPreTraining(small_config()).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(
            b["input_ids"],
            b["token_type_ids"],
            b["attention_mask"],
            masked_lm_labels=b["masked_lm_labels"],
            next_sentence_labels=b["next_sentence_labels"],
            masked_lm_positions=b["masked_lm_positions"],
            unpadding=None,  # what the compiled trainer passes
            label_smoothing=0.0,
        )
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def losses(device, out, compile: bool) -> list[float]:
    torch.manual_seed(0)
    model = BertForPreTraining(small_config()).to(device)
    config = TrainConfig(
        max_steps=5, batch_size=16, lr=1e-3, log_every=1, tensorboard=False, compile=compile
    )
    data = SyntheticPretraining(16 * 5, 128, 4096)
    Trainer(config, model, data, Runtime(0, 0, 1, device, "bf16"), out).fit()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def test_compiled_trainer_matches_eager(device, tmp_path):
    eager = losses(device, tmp_path / "eager", compile=False)
    compiled = losses(device, tmp_path / "compiled", compile=True)
    assert len(compiled) == len(eager) == 5
    assert compiled == pytest.approx(eager, rel=2e-2)
    assert eager[-1] < eager[0]  # it trained: the comparison is not of two constants
