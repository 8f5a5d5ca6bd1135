"""--label-smoothing reaches the trainer's MLM loss; evaluation stays unsmoothed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bertcli.evaluate import evaluate_model
from tests.train.test_trainer import make_trainer


def test_trainer_smooths_the_mlm_loss_and_evaluation_does_not(tokenizer_dir, corpus, tmp_path):
    eps = 0.2
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "run", 8, 1, steps=1)
    trainer.config.label_smoothing = eps
    loader, _ = trainer._epoch_batches(0, 0)
    batch = next(iter(loader))
    model = trainer.model
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    labelled = batch["masked_lm_labels"] != -100
    targets = batch["masked_lm_labels"][labelled]
    smoothed = F.cross_entropy(logits.mlm_logits[labelled], targets, label_smoothing=eps)
    plain = F.cross_entropy(logits.mlm_logits[labelled], targets)

    # evaluation of the untrained model on this very batch: the plain loss
    class OneBatch(torch.utils.data.Dataset):
        def __len__(self):
            return len(batch["input_ids"])

        def __getitem__(self, i):
            return {k: v[i].numpy() for k, v in batch.items()}

    result = evaluate_model(model, OneBatch(), 8, trainer.runtime)
    assert result["mlm_loss"] == pytest.approx(plain.item(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(plain.exp().item(), rel=1e-5)

    trainer.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "split" not in r)
    assert first["mlm_loss"] == pytest.approx(smoothed.item(), rel=1e-5)
    # an untrained model is near uniform, so the two differ little, but far beyond the tolerance
    assert first["mlm_loss"] != pytest.approx(plain.item(), rel=1e-5)
