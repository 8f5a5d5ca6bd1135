"""evaluate equals a hand computation with transformers on the same checkpoint and shard."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertcli.config import BertConfig
from bertcli.data.shards import find_shards, read_shard
from bertcli.model import BertForPreTraining
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import save_tokenizer, tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))
    (root / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text()[:60_000])
    result = preprocess(
        PreprocessConfig(
            [root / "c.txt"], root / "shards", max_seq_length=64, dupe_factor=1, workers=1
        ),
        tok,
    )
    torch.manual_seed(0)
    config = BertConfig.from_preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64)
    BertForPreTraining(config).save_pretrained(root / "ckpt")
    save_tokenizer(tok, root / "tok")
    return root, result.directory


def hand_metrics(checkpoint, shard_dir):
    transformers = pytest.importorskip("transformers")  # only this reference needs it
    model = transformers.BertForPreTraining.from_pretrained(checkpoint).eval()
    shard = read_shard(find_shards(shard_dir)[0])
    loss_sum = correct = masked = nsp_sum = nsp_correct = 0.0
    with torch.no_grad():
        for start in range(0, len(shard), 16):
            sl = slice(start, start + 16)
            ids = torch.from_numpy(shard.input_ids[sl].astype(np.int64))
            out = model(
                input_ids=ids,
                token_type_ids=torch.from_numpy(shard.segment_ids[sl].astype(np.int64)),
                attention_mask=torch.from_numpy(shard.input_mask[sl].astype(np.int64)),
            )
            for row in range(len(ids)):
                positions = shard.masked_lm_positions[start + row]
                n = int(np.count_nonzero(positions))
                logits = out.prediction_logits[row, positions[:n]]
                target = torch.from_numpy(shard.masked_lm_ids[start + row, :n].astype(np.int64))
                loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
                correct += (logits.argmax(-1) == target).sum().item()
                masked += n
            nsp = torch.from_numpy(shard.next_sentence_labels[sl].astype(np.int64))
            nsp_sum += F.cross_entropy(out.seq_relationship_logits, nsp, reduction="sum").item()
            nsp_correct += (out.seq_relationship_logits.argmax(-1) == nsp).sum().item()
    return {
        "mlm_loss": loss_sum / masked,
        "mlm_accuracy": correct / masked,
        "perplexity": math.exp(loss_sum / masked),
        "nsp_loss": nsp_sum / len(shard),
        "nsp_accuracy": nsp_correct / len(shard),
        "num_sequences": len(shard),
        "num_masked_tokens": int(masked),
    }


def test_evaluate_equals_transformers_by_hand(invoke, setup):
    root, shards = setup
    result = invoke(
        "evaluate",
        "--checkpoint",
        root / "ckpt",
        "--data-preprocessed",
        shards,
        "--batch-size",
        "7",
        "--json",
    )
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    expected = hand_metrics(root / "ckpt", shards)
    assert ours["num_sequences"] == expected["num_sequences"]
    assert ours["num_masked_tokens"] == expected["num_masked_tokens"]
    for key in ("mlm_loss", "mlm_accuracy", "perplexity", "nsp_loss", "nsp_accuracy"):
        assert ours[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_evaluate_accuracy_of_a_model_whose_answer_is_known(invoke, setup, tmp_path):
    """An untrained model whose MLM bias makes one token always win (and whose NSP bias always
    says "B follows A"): its accuracies are exactly that token's share of the masked labels and
    the share of label 0, counted straight from the shard, with no model in the reference."""
    root, shards = setup
    shard = read_shard(find_shards(shards)[0])
    n = 64  # --batch-size 16 --max-batches 4: the first 64 sequences, in order
    labels = np.concatenate(
        [
            shard.masked_lm_ids[i, : int(np.count_nonzero(shard.masked_lm_positions[i]))]
            for i in range(n)
        ]
    )
    values, counts = np.unique(labels, return_counts=True)
    winner = int(values[np.argmax(counts)])  # the most frequent label: a non-zero share
    expected_mlm = float(counts.max()) / len(labels)
    expected_nsp = float(np.mean(shard.next_sentence_labels[:n] == 0))
    assert 0.0 < expected_mlm < 1.0 and 0.0 < expected_nsp < 1.0

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_dict(json.loads((root / "ckpt" / "config.json")
                                                               .read_text())))  # fmt: skip
    with torch.no_grad():
        model.mlm_bias[winner] = 1e4  # logits of an untrained model are O(1)
        model.nsp.bias.copy_(torch.tensor([1e4, 0.0]))
    model.save_pretrained(tmp_path / "known")
    result = invoke("evaluate", "--checkpoint", tmp_path / "known", "--data-preprocessed", shards,
                    "--batch-size", "16", "--max-batches", "4", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    assert ours["num_masked_tokens"] == len(labels)
    assert ours["mlm_accuracy"] == pytest.approx(expected_mlm, abs=1e-9)
    assert ours["nsp_accuracy"] == pytest.approx(expected_nsp, abs=1e-9)


def test_evaluate_text_is_deterministic_and_table(invoke, setup):
    root, _ = setup
    args = [
        "evaluate",
        "--checkpoint",
        root / "ckpt",
        "--data-text",
        root / "c.txt",
        "--tokenizer",
        root / "tok",
        "--max-seq-length",
        "64",
    ]
    a, b = invoke(*args, "--json"), invoke(*args, "--json")
    assert a.exit_code == 0, a.output
    assert json.loads(a.stdout) == json.loads(b.stdout)
    table = invoke(*args)
    assert table.exit_code == 0 and "perplexity" in table.stdout


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            ["--data-text", "{root}/c.txt", "--tokenizer", "{tiny_tok}", "--max-seq-length", "64"],
            "tokenizer has",
        ),
        (
            ["--data-text", "{root}/c.txt", "--tokenizer", "{root}/tok", "--max-seq-length", "128"],
            "max_position_embeddings",
        ),
        (["--data-preprocessed", "{root}/nope"], "no such directory"),
        (["--data-preprocessed", "{root}/shards", "--batch-size", "0"], "--batch-size"),
        (["--data-text", "{root}/c.txt", "--max-seq-length", "64"], "holds no tokenizer"),
    ],
)
def test_evaluate_bad_input(invoke, setup, tmp_path, extra, needle):
    root, _ = setup
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    args = [
        a.replace("{root}", str(root)).replace("{tiny_tok}", str(tmp_path / "v.txt")) for a in extra
    ]
    result = invoke("evaluate", "--checkpoint", root / "ckpt", *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr
    result = invoke("evaluate", "--checkpoint", tmp_path, "--data-text", root / "c.txt")
    assert result.exit_code == 2 and "not a BERT checkpoint" in result.stderr
