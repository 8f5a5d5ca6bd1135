"""The fine-tuning loop against a reference loop: a transformers model, torch.optim.AdamW with
the same parameter groups, the same LR schedule and the same batches, over >= 30 steps."""

from __future__ import annotations

import pytest
import torch

from bertcli.config import FinetuneConfig
from bertcli.finetune.run import TaskData, train_model
from bertcli.finetune.tasks import get_task
from bertcli.hf import build_task_model, save_task_model, task_state_dict
from bertcli.model import IGNORE_INDEX
from bertcli.train.runtime import Runtime
from bertcli.train.schedules import learning_rate
from tests.finetune.conftest import tiny_config

transformers = pytest.importorskip("transformers")  # the reference

VOCAB = 97
CPU = Runtime(0, 0, 1, torch.device("cpu"), "fp32")


def _features(n: int, token: bool, regression: bool, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 15, (), generator=g))
        ids = [2, *torch.randint(5, VOCAB, (length - 2,), generator=g).tolist(), 3]
        f = {"input_ids": ids, "token_type_ids": [0] * length}
        if token:
            labels = torch.randint(0, 3, (length,), generator=g).tolist()
            labels[0] = labels[-1] = IGNORE_INDEX
            f["labels"] = labels
        elif regression:
            f["label"] = float(torch.rand((), generator=g)) * 5
        else:
            f["label"] = int(torch.randint(0, 2, (), generator=g))
        out.append(f)
    return out


def _config(tmp_path, **kw) -> FinetuneConfig:
    base = dict(
        init_from="x",
        task="classification",
        out=tmp_path / "run",
        lr=1e-3,
        num_epochs=3,
        batch_size=8,
        weight_decay=0.01,
        warmup_ratio=0.1,
        seeds=1,
        tensorboard=False,
    )
    base.update(kw)
    return FinetuneConfig(**base)


def _reference(path, data: TaskData, config: FinetuneConfig, seed: int, kind: str):
    """transformers' model and a plain loop over the same batches."""
    cls = (
        transformers.BertForTokenClassification
        if kind == "token"
        else transformers.BertForSequenceClassification
    )
    model = cls.from_pretrained(path)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": rest, "weight_decay": 0},
        ],
        lr=config.lr,
        betas=(0.9, 0.999),
        eps=config.eps,
    )
    n, bs = len(data.train), config.batch_size
    steps = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    total = len(steps) * config.num_epochs
    warmup = int(round(config.warmup_ratio * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate(config.lr_policy, s, 1.0, total, warmup)
    )
    from bertcli.finetune.data import collate_features

    for epoch in range(config.num_epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start, end in steps:
            batch = collate_features([data.train[i] for i in order[start:end]], 0, data.regression)
            out = model(
                input_ids=batch["input_ids"],
                token_type_ids=batch["token_type_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    return model


@pytest.mark.parametrize("task", ["classification", "regression", "ner"])
def test_loop_equals_reference_loop(tmp_path, task):
    kind = "token" if task == "ner" else "sequence"
    regression = task == "regression"
    torch.manual_seed(0)
    theirs0 = (
        transformers.BertForTokenClassification
        if kind == "token"
        else transformers.BertForSequenceClassification
    )(
        transformers.BertConfig(
            **tiny_config(VOCAB).to_dict(),
            num_labels=1 if regression else 3 if kind == "token" else 2,
        )
    )
    theirs0.save_pretrained(tmp_path / "init")
    num_labels = 1 if regression else 3 if kind == "token" else 2
    ours = build_task_model(
        tmp_path / "init",
        kind,
        num_labels,
        "regression" if regression else None,
        keep_classifier=True,
    )
    # 85 examples in batches of 8: 11 steps per epoch, the last one short; 33 steps in all
    data = TaskData(
        get_task(task),
        ["a", "b", "c"][:num_labels],
        _features(85, kind == "token", regression),
        tmp_path,
        [],
    )
    config = _config(tmp_path, task=task)
    stats = train_model(ours, data, config, CPU, seed=7, log=_Quiet(), metrics=None)
    assert stats["steps"] == 33
    reference = _reference(tmp_path / "init", data, config, 7, kind)
    ref_state = reference.state_dict()
    for name, tensor in task_state_dict(ours, kind).items():
        expected = ref_state[name]
        # relative to the tensor's scale; the floor is for the attention key biases, whose exact
        # gradient is 0 (softmax ignores a shift shared by all keys): rounding noise only
        scale = expected.abs().max().clamp(min=1e-2)
        assert float((tensor - expected).abs().max() / scale) < 1e-4, name
    # and the trained weights moved: the comparison is not of two untouched copies
    start = theirs0.state_dict()["classifier.weight"]
    assert not torch.allclose(task_state_dict(ours, kind)["classifier.weight"], start)


def test_micro_batches_equal_one_big_batch(tmp_path):
    """--batches-per-step 2 x --batch-size 4 takes the same steps as --batch-size 8."""
    torch.manual_seed(0)
    transformers.BertForTokenClassification(
        transformers.BertConfig(**tiny_config(VOCAB).to_dict(), num_labels=3)
    ).save_pretrained(tmp_path / "init")
    data = TaskData(get_task("ner"), ["a", "b", "c"], _features(40, True, False), tmp_path, [])
    results = []
    for bs, k in ((8, 1), (4, 2)):
        model = build_task_model(tmp_path / "init", "token", 3, keep_classifier=True)
        config = _config(tmp_path, task="ner", batch_size=bs, batches_per_step=k, num_epochs=2)
        train_model(model, data, config, CPU, seed=1, log=_Quiet(), metrics=None)
        results.append(task_state_dict(model, "token"))
    for name, tensor in results[0].items():
        torch.testing.assert_close(results[1][name], tensor, atol=2e-5, rtol=1e-4)


def test_saved_model_round_trips(tmp_path):
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(
        transformers.BertConfig(**tiny_config(VOCAB).to_dict(), num_labels=2)
    ).save_pretrained(tmp_path / "init")
    model = build_task_model(tmp_path / "init", "sequence", 2, keep_classifier=True)
    (tmp_path / "out").mkdir()
    save_task_model(model, "sequence", ["neg", "pos"], tmp_path / "out")
    again = build_task_model(tmp_path / "out", "sequence", 2, keep_classifier=True)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)


class _Quiet:
    def start(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass

    def status(self, **k):
        pass

    def finish(self):
        pass

    def log(self, message):
        pass
