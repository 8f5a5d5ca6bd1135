"""evaluate on checkpoints without the NSP head, without any pretraining head, and from MLM-only
runs (issue 22): MLM is scored, NSP is left out (no `nsp_*` keys, `"nsp": false`), and an
encoder-only checkpoint is refused in one line that says what to do."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bertcli.data.datasets import TextDataset, collate
from bertcli.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from tests.conftest import WIKITEXT2, require

transformers = pytest.importorskip("transformers")  # the checkpoints and the reference


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (root / "train.txt").write_text(text[:40_000])
    (root / "valid.txt").write_text(text[100_000:106_000])
    train_tokenizer("wordpiece", [root / "train.txt"], 600, root / "tok")
    tok = load_tokenizer(root / "tok")
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    for name in ("mlm", "encoder"):
        save_tokenizer(tok, root / name)  # first: it refuses a non-empty non-tokenizer dir
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(root / "mlm")
    transformers.BertModel(config).save_pretrained(root / "encoder")
    return root


def reference_mlm_loss(checkpoint, dataset) -> tuple[float, int]:
    """transformers' own BertForMaskedLM on the same (packed) examples: mean loss, count."""
    model = transformers.BertForMaskedLM.from_pretrained(checkpoint).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), 8):
            b = collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
            logits = model(
                input_ids=b["input_ids"],
                token_type_ids=b["token_type_ids"],
                attention_mask=b["attention_mask"],
            ).logits
            labels = b["masked_lm_labels"]
            total += F.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
            ).item()
            count += int((labels != -100).sum())
    return total / count, count


def test_masked_lm_checkpoint_is_scored_on_mlm_without_nsp(invoke, inputs):
    """transformers' BertForMaskedLM (no pooler, no NSP head): scored, as transformers scores it."""
    root = inputs
    result = invoke("evaluate", "--checkpoint", root / "mlm", "--data-text", root / "valid.txt",
                    "--max-seq-length", "64", "--batch-size", "8", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    ours = json.loads(result.stdout)
    assert ours["nsp"] is False
    assert "nsp_loss" not in ours and "nsp_accuracy" not in ours
    # MLM-only scoring packs the text, as pretrain --no-nsp trains
    data = TextDataset([root / "valid.txt"], load_tokenizer(root / "tok"), max_seq_length=64,
                       seed=12345, nsp=False)  # fmt: skip
    loss, count = reference_mlm_loss(root / "mlm", data)
    assert ours["num_masked_tokens"] == count
    assert ours["mlm_loss"] == pytest.approx(loss, rel=1e-4)

    table = invoke("evaluate", "--checkpoint", root / "mlm", "--data-text", root / "valid.txt",
                   "--max-seq-length", "64", "--max-batches", "1")  # fmt: skip
    assert table.exit_code == 0, table.output + table.stderr
    assert "mlm_loss" in table.stdout and "nsp_accuracy" not in table.stdout


def test_nsp_on_a_checkpoint_without_the_nsp_head_is_one_line(invoke, inputs):
    root = inputs
    result = invoke("evaluate", "--checkpoint", root / "mlm", "--data-text", root / "valid.txt",
                    "--max-seq-length", "64", "--nsp")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --nsp:") and "no NSP head" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_encoder_only_checkpoint_says_what_to_do(invoke, inputs):
    """A bare BertModel (like all-MiniLM-L6-v2): no cls.* tensors, so nothing to score MLM with."""
    root = inputs
    result = invoke("evaluate", "--checkpoint", root / "encoder", "--data-text",
                    root / "valid.txt", "--max-seq-length", "64")  # fmt: skip
    assert result.exit_code == 2
    line = result.stderr
    assert line.startswith("error: ") and line.count("\n") == 1
    assert "has no MLM head" in line
    assert "pretrain --init-from" in line and "bertcli finetune" in line


def test_mlm_only_run_reports_no_nsp(invoke, inputs):
    """pretrain --no-nsp: its eval rows and its checkpoint's evaluate have no NSP numbers, and
    evaluate defaults to packed text, as the run trained; --nsp still scores pairs on request."""
    from bertcli.train.checkpoint import latest_checkpoint

    root, out = inputs, inputs / "run"
    result = invoke(
        "pretrain", "--data-text", "--train-data", root / "train.txt", "--eval-data",
        root / "valid.txt", "--tokenizer", root / "tok", "--preset", "tiny", "--hidden-size",
        "32", "--num-attention-heads", "2", "--max-seq-length", "32", "--batch-size", "4",
        "--max-steps", "2", "--eval-batches", "1", "--no-nsp", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "eval"]
    assert evals and all("eval/nsp_accuracy" not in r and "nsp_accuracy" not in r for r in evals)
    assert "nsp_acc" not in result.output + result.stderr
    ckpt = latest_checkpoint(out / "checkpoints")
    assert json.loads((ckpt / "trainer_state.json").read_text())["nsp"] is False

    base = ["evaluate", "--checkpoint", ckpt, "--data-text", root / "valid.txt",
            "--max-seq-length", "32", "--json"]  # fmt: skip
    mlm_only = json.loads(invoke(*base).stdout)
    assert mlm_only["nsp"] is False and "nsp_accuracy" not in mlm_only
    pairs = invoke(*base, "--nsp")
    assert pairs.exit_code == 0, pairs.output + pairs.stderr
    both = json.loads(pairs.stdout)
    assert both["nsp"] is True and 0.0 <= both["nsp_accuracy"] <= 1.0
    assert both["num_sequences"] != mlm_only["num_sequences"]  # pairs vs packed windows
