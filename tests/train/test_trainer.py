"""The training loop on the CPU: loss falls, exact resume, accumulation, signals, atomic saves."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.data.datasets import TextDataset
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import load_tokenizer
from bertcli.train import checkpoint as ckpt
from bertcli.train.runtime import Runtime
from bertcli.train.trainer import TrainConfig, Trainer
from tests.train.conftest import TINY


def rows(out, split=None):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == split]


def pretrain_args(corpus, tokenizer_dir, out, *extra):
    return [
        "pretrain",
        "--data-text",
        "--train-data",
        corpus / "train.txt",
        "--tokenizer",
        tokenizer_dir,
        "--out",
        out,
        *TINY,
        *extra,
    ]


def test_loss_falls_and_outputs_exist(invoke, corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        *pretrain_args(
            corpus,
            tokenizer_dir,
            out,
            "--eval-data",
            corpus / "valid.txt",
            "--max-steps",
            "60",
            "--lr",
            "1e-3",
            "--log-every",
            "5",
            "--warmup-steps",
            "5",
            "--json",
        )
    )
    assert result.exit_code == 0, result.output
    train = rows(out)
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    for key in ("loss", "mlm_loss", "nsp_loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in train[0]
    assert rows(out, "eval")[-1]["num_masked_tokens"] > 0
    for name in ("run.json", "bert-config.json", "tensorboard", "checkpoints/step_00000060"):
        assert (out / name).exists(), name
    summary = json.loads(result.stdout)
    assert summary["train"]["step"] == 60
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForPreTraining.from_pretrained(out / "checkpoints" / "step_00000060")
    auto = transformers.AutoTokenizer.from_pretrained(out / "checkpoints" / "step_00000060")
    assert model.config.vocab_size == len(auto) == 2000


def test_resume_reproduces_uninterrupted_losses(
    invoke, corpus, tokenizer_dir, tmp_path, monkeypatch
):
    common = ["--max-steps", "12", "--log-every", "1", "--save-every", "5", "--lr", "1e-3"]
    whole = tmp_path / "whole"
    assert invoke(*pretrain_args(corpus, tokenizer_dir, whole, *common)).exit_code == 0

    # the same run, killed during step 8 (after the step-5 save and logged rows 6..7)
    cut = tmp_path / "cut"
    original = Trainer._train_step

    def dying(self, micro):
        if self.step == 7:
            raise SystemExit("killed")
        return original(self, micro)

    monkeypatch.setattr(Trainer, "_train_step", dying)
    assert invoke(*pretrain_args(corpus, tokenizer_dir, cut, *common)).exit_code != 0
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert ckpt.latest_checkpoint(cut / "checkpoints").name == "step_00000005"

    resumed = invoke(*pretrain_args(corpus, tokenizer_dir, cut, *common, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    expected, got = rows(whole), rows(cut)
    assert [r["step"] for r in got] == list(range(1, 13))
    for a, b in zip(expected, got):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], (a, b)


def make_trainer(tokenizer_dir, corpus, out, batch_size, batches_per_step, steps=3):
    tok = load_tokenizer(tokenizer_dir)
    data = TextDataset([corpus / "train.txt"], tok, max_seq_length=64)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    runtime = Runtime(0, 0, 1, torch.device("cpu"), "fp32")
    train = TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        batches_per_step=batches_per_step,
        lr=1e-3,
        warmup_steps=0,
        tensorboard=False,
        log_every=1,
    )
    return Trainer(train, model, data, runtime, out, tokenizer=tok)


def test_accumulation_equals_one_large_batch(tokenizer_dir, corpus, tmp_path):
    big = make_trainer(tokenizer_dir, corpus, tmp_path / "a", batch_size=8, batches_per_step=1)
    acc = make_trainer(tokenizer_dir, corpus, tmp_path / "b", batch_size=4, batches_per_step=2)
    big.fit()
    acc.fit()
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5, msg=name)
    for a, b in zip(rows(tmp_path / "a"), rows(tmp_path / "b")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_sigterm_finishes_the_step_and_saves(tokenizer_dir, corpus, tmp_path, monkeypatch):
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "t", 4, 1, steps=50)
    original = Trainer._train_step

    def signalling(self, micro):
        result = original(self, micro)
        if self.step == 3:  # the step being taken is the 4th
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "_train_step", signalling)
    result = trainer.fit()
    assert result["stopped_early"] and trainer.step == 4
    assert ckpt.latest_checkpoint(tmp_path / "t" / "checkpoints").name == "step_00000004"


def test_kill_during_save_keeps_previous_checkpoint(tokenizer_dir, corpus, tmp_path, monkeypatch):
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "k", 4, 1, steps=2)
    trainer.fit()
    root = tmp_path / "k" / "checkpoints"
    good = ckpt.latest_checkpoint(root)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies half-way through writing

    monkeypatch.setattr(ckpt.torch, "save", crash)
    trainer.step = 3
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert ckpt.latest_checkpoint(root) == good
    assert sorted(p.name for p in root.iterdir()) == [good.name]
    # a hard kill leaves its temporary directory behind: it is never taken for a checkpoint
    shutil.copytree(good, root / ".step_00000009.abcd")
    (root / "step_00000010").mkdir()  # and a directory without trainer state is ignored
    assert ckpt.latest_checkpoint(root) == good
    BertForPreTraining.from_pretrained(good)
    transformers = pytest.importorskip("transformers")
    transformers.BertForPreTraining.from_pretrained(good)


def test_keep_last_prunes(tokenizer_dir, corpus, tmp_path):
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "p", 4, 1, steps=4)
    trainer.config.save_every = 1
    trainer.config.keep_last = 2
    trainer.fit()
    names = [p.name for _, p in ckpt.list_checkpoints(tmp_path / "p" / "checkpoints")]
    assert names == ["step_00000003", "step_00000004"]


@pytest.mark.parametrize("optimizer", ["lamb", "novograd", "sgd"])
def test_other_optimizers_reduce_loss(tokenizer_dir, corpus, tmp_path, optimizer):
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / optimizer, 8, 1, steps=25)
    trainer.config.optimizer = optimizer
    from bertcli.train.optim import build_optimizer

    # Novograd's momentum has no (1 - beta1) factor (NeMo's form): 0.1 is a per-tensor step of
    # ~1 and diverges or not on float noise; 0.02 falls steadily
    lr = {"lamb": 5e-2, "novograd": 0.02, "sgd": 0.5}[optimizer]
    trainer.config.lr = lr
    trainer.optimizer = build_optimizer(optimizer, trainer.model, lr, 0.01, (0.9, 0.999), "cpu")
    trainer.fit()
    losses = [r["loss"] for r in rows(tmp_path / optimizer)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses


def poison_step(monkeypatch, step: int, value: float) -> None:
    """Make the loss of optimizer step `step` (1-based) non-finite."""
    original = Trainer._train_step

    def poisoned(self, micro):
        totals, *rest = original(self, micro)
        if self.step == step - 1:  # self.step counts the steps already taken
            totals = totals * value
        return (totals, *rest)

    monkeypatch.setattr(Trainer, "_train_step", poisoned)


def test_non_finite_loss_stops_naming_the_step(tokenizer_dir, corpus, tmp_path, monkeypatch):
    from bertcli.errors import UserError

    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "nan", 4, 1, steps=6)
    trainer.config.save_every = 1
    poison_step(monkeypatch, 3, float("nan"))
    with pytest.raises(UserError, match="non-finite loss at step 3"):
        trainer.fit()
    names = [p.name for _, p in ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints")]
    assert names == ["step_00000001", "step_00000002"]  # the good ones, nothing after


def test_deferred_finite_check_still_guards_saves(tokenizer_dir, corpus, tmp_path, monkeypatch):
    """The GPU path checks at log intervals only; a save in between must still refuse."""
    from bertcli.errors import UserError

    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "gpu", 4, 1, steps=8)
    trainer.finite_check_every = 100  # as on CUDA with a long log interval
    trainer.config.save_every = 4
    poison_step(monkeypatch, 6, float("inf"))
    with pytest.raises(UserError, match="non-finite loss at step 6"):
        trainer.fit()
    names = [p.name for _, p in ckpt.list_checkpoints(tmp_path / "gpu" / "checkpoints")]
    assert names == ["step_00000004"]


def test_state_has_one_rng_record_and_old_single_rng_checkpoints_resume(
    tokenizer_dir, corpus, tmp_path
):
    trainer = make_trainer(tokenizer_dir, corpus, tmp_path / "run", 4, 1, steps=2)
    trainer.fit()
    path = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(path / ckpt.STATE_FILE, weights_only=False)
    assert "rng" not in state and len(state["rng_per_rank"]) == 1
    # a checkpoint written before rng_per_rank existed had only "rng"
    old = {k: v for k, v in state.items() if k != "rng_per_rank"}
    old["rng"] = state["rng_per_rank"][0]
    torch.save(old, path / ckpt.STATE_FILE)
    resumed = make_trainer(tokenizer_dir, corpus, tmp_path / "run", 4, 1, steps=3)
    torch.manual_seed(999)  # another state, which the resume must replace
    assert not torch.equal(torch.get_rng_state(), state["rng_per_rank"][0]["torch"])
    resumed._restore(path)
    assert resumed.step == 2
    assert torch.equal(torch.get_rng_state(), state["rng_per_rank"][0]["torch"])
