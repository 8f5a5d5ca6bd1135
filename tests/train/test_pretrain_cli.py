"""pretrain through the CLI: shards, --init-from (dirs, transformers dirs), bad input.

--init-from a Hub name (download, cache, offline) is in tests/test_hub.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.model import BertForPreTraining
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import load_tokenizer
from tests.train.conftest import TINY


@pytest.fixture(scope="module")
def shards(corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    tok = load_tokenizer(tokenizer_dir)
    train = preprocess(
        PreprocessConfig(
            [corpus / "train.txt"], out / "train", max_seq_length=64, dupe_factor=1, workers=1
        ),
        tok,
    )
    valid = preprocess(
        PreprocessConfig(
            [corpus / "valid.txt"], out / "valid", max_seq_length=64, dupe_factor=1, workers=1
        ),
        tok,
    )
    return train.directory, valid.directory


def pretrained_dir(tmp_path, vocab_size, transformers_layout=False):
    torch.manual_seed(0)
    cfg = BertConfig.from_preset(
        "tiny", hidden_size=64, num_attention_heads=2, intermediate_size=128, vocab_size=vocab_size
    )
    path = tmp_path / "pretrained"
    if transformers_layout:
        transformers = pytest.importorskip("transformers")
        transformers.BertForPreTraining(transformers.BertConfig(**cfg.to_dict())).save_pretrained(
            path
        )
    else:
        BertForPreTraining(cfg).save_pretrained(path)
    return path


def test_pretrain_on_shards_from_transformers_checkpoint(invoke, shards, tokenizer_dir, tmp_path):
    init = pretrained_dir(tmp_path, 2000, transformers_layout=True)
    out = tmp_path / "run"
    result = invoke(
        "pretrain",
        "--data-preprocessed",
        "--train-data",
        shards[0],
        "--eval-data",
        shards[1],
        "--tokenizer",
        tokenizer_dir,
        "--init-from",
        init,
        "--out",
        out,
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--log-every",
        "2",
        "--no-nsp",
        "--json",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["nsp_loss"] is None and rows[0]["loss"] == rows[0]["mlm_loss"]
    before = BertForPreTraining.from_pretrained(init).state_dict()
    after = BertForPreTraining.from_pretrained(out / "checkpoints" / "step_00000004").state_dict()
    assert torch.equal(before["nsp.weight"], after["nsp.weight"])  # NSP head untouched
    assert not torch.equal(before["mlm_dense.weight"], after["mlm_dense.weight"])


def test_default_corpus_and_auto_tokenizer(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "pretrain",
        "--data-text",
        "--preset",
        "tiny",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-seq-length",
        "32",
        "--json",
    )
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "outputs" / "bert_lm").iterdir())
    assert len(runs) == 1
    assert (runs[0] / "tokenizer" / "vocab.txt").is_file()
    run = json.loads((runs[0] / "run.json").read_text())
    assert run["train_files"][0].endswith("sample/train.txt")


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--data-text", "--train-data", "{c}/train.txt", "--config-file", "{cfg}"],
            "tokenizer has 2000 tokens but the model config has vocab_size 30522",
        ),
        (
            ["--data-text", "--train-data", "{c}/train.txt", "--max-seq-length", "1024"],
            "max_position_embeddings",
        ),
        (["--data-text", "--train-data", "{c}/train.txt", "--batch-size", "0"], "--batch-size"),
        (
            ["--data-text", "--train-data", "{c}/train.txt", "--eval-data", "{c}/nope.txt"],
            "no such file",
        ),
        (["--data-text", "--train-data", "{c}/train.txt", "--resume"], "no complete checkpoint"),
        (
            ["--data-text", "--train-data", "{c}/train.txt", "--init-from", "{c}"],
            "not a BERT checkpoint",
        ),
        (["--data-preprocessed"], "--train-data"),
        (["--data-text", "--train-data", "{c}/train.txt", "--lr", "-1"], "--lr"),
        (["--data-text", "--train-data", "{c}/train.txt", "--precision", "fp16"], "CUDA"),
        (
            ["--data-text", "--train-data", "{c}/train.txt", "--num-attention-heads", "3"],
            "divisible",
        ),
        (["--data-text", "--train-data", "{c}/train.txt", "--lr-policy", "nope"], "--lr-policy"),
    ],
)
def test_pretrain_bad_input(invoke, corpus, tokenizer_dir, tmp_path, args, needle):
    BertConfig.from_preset("tiny").save(tmp_path / "cfg.json")
    args = [
        a.replace("{c}", str(corpus)).replace("{cfg}", str(tmp_path / "cfg.json")) for a in args
    ]
    has_tok = any(a in ("--tokenizer",) for a in args)
    tok_args = [] if has_tok else ["--tokenizer", str(tokenizer_dir)]
    result = invoke(
        "pretrain",
        *args,
        *tok_args,
        "--preset",
        "tiny",
        "--out",
        tmp_path / "o",
        "--max-steps",
        "2",
        "--max-seq-length" if "--max-seq-length" not in args else "--seed",
        "64" if "--max-seq-length" not in args else "1",
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


def dle_getitem(f, index, max_pred_length):
    """DeepLearningExamples' `pretraining_dataset.__getitem__` (PyTorch BERT), restated."""
    import numpy as np

    keys = [
        "input_ids",
        "input_mask",
        "segment_ids",
        "masked_lm_positions",
        "masked_lm_ids",
        "next_sentence_labels",
    ]
    inputs = [np.asarray(f[key][:]) for key in keys]
    input_ids, input_mask, segment_ids, positions, ids, nsp = [
        torch.from_numpy(x[index].astype(np.int64))
        if i < 5
        else torch.from_numpy(np.asarray(x[index].astype(np.int64)))
        for i, x in enumerate(inputs)
    ]
    masked_lm_labels = torch.ones(input_ids.shape, dtype=torch.long) * -1
    padded = (positions == 0).nonzero()
    limit = padded[0].item() if len(padded) != 0 else max_pred_length
    masked_lm_labels[positions[:limit]] = ids[:limit]
    return input_ids, segment_ids, input_mask, masked_lm_labels, nsp


def test_our_shards_read_the_same_in_dles_loader(shards):
    import h5py

    from bertcli.data.datasets import PreprocessedDataset
    from bertcli.data.shards import find_shards

    ours = PreprocessedDataset(shards[0])
    with h5py.File(find_shards(shards[0])[0]) as f:
        for index in (0, 1, 17, len(ours) - 1):
            ids, segments, mask, labels, nsp = dle_getitem(f, index, 20)
            row = ours[index]
            assert torch.equal(torch.from_numpy(row["input_ids"]), ids)
            assert torch.equal(torch.from_numpy(row["token_type_ids"]), segments)
            assert torch.equal(torch.from_numpy(row["attention_mask"]), mask)
            ignore = labels == -1  # DLE marks "not predicted" with -1, transformers with -100
            assert torch.equal(torch.from_numpy(row["masked_lm_labels"])[~ignore], labels[~ignore])
            assert (torch.from_numpy(row["masked_lm_labels"])[ignore] == -100).all()
            assert int(row["next_sentence_labels"]) == int(nsp)


def test_pretrain_on_a_dle_written_shard(invoke, tokenizer_dir, tmp_path):
    from tests.data.test_shards import random_arrays, write_like_dle

    arrays = random_arrays(n=64, seq=64, pred=10, seed=3)
    arrays.input_ids %= 2000
    arrays.masked_lm_ids %= 2000
    (tmp_path / "dle").mkdir()
    write_like_dle(tmp_path / "dle" / "wikicorpus_en_training_0.hdf5", arrays)
    result = invoke(
        "pretrain",
        "--data-preprocessed",
        "--train-data",
        tmp_path / "dle",
        "--tokenizer",
        tokenizer_dir,
        *TINY[:6],
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--out",
        tmp_path / "run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train"]["step"] == 3
