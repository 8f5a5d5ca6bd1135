"""preprocess end to end: CLI output layout, eval split, JSON input, and a kill in the middle."""

from __future__ import annotations

import json

import pytest

from bertcli import preprocess as pp
from bertcli.data.datasets import PreprocessedDataset
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, ZH_DIR, require


@pytest.fixture(scope="module")
def uncased():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


def test_cli_layout_and_eval_split(invoke, tmp_path):
    (tmp_path / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text()[:300_000])
    result = invoke(
        "preprocess",
        "--input",
        tmp_path / "c.txt",
        "--vocab-file",
        VOCAB_DIR / "bert-base-uncased.txt",
        "--out",
        tmp_path / "out",
        "--eval-fraction",
        "0.2",
        "--dupe-factor",
        "1",
        "--shard-size",
        "400",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    directory = (
        tmp_path
        / "out"
        / (
            "lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_1"
        )
    )
    assert summary["directory"] == str(directory)
    shards = sorted(p.name for p in directory.glob("*.hdf5"))
    assert shards[0] == "training_00000.hdf5" and len(shards) == summary["train_shards"] > 1
    assert all("training" in name for name in shards)  # DLE's loader filters on 'training'
    assert len(PreprocessedDataset(directory)) == summary["train_examples"]
    assert len(PreprocessedDataset(directory / "eval")) == summary["eval_examples"] > 0
    assert json.loads((directory / "preprocess.json").read_text())["result"]["train_examples"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_chinese_jsonl(tmp_path):
    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-chinese.txt"))
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text(
        "\n".join(
            require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl").read_text().splitlines()[:5]
        )
    )
    result = preprocess(PreprocessConfig([corpus], tmp_path / "o", dupe_factor=1, workers=1), tok)
    assert result.documents == 5 and result.train_examples > 50
    data = PreprocessedDataset(result.directory)
    text = tok.tokenizer.decode(data[0]["input_ids"].tolist())
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_kill_in_the_middle_leaves_nothing_complete(uncased, tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text())
    original = pp.make_block_examples
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pp, "make_block_examples", dying)
    monkeypatch.setattr(pp, "BLOCK_DOCUMENTS", 8)
    config = PreprocessConfig(
        [tmp_path / "c.txt"], tmp_path / "out", dupe_factor=1, workers=1, shard_size=100
    )
    with pytest.raises(KeyboardInterrupt):
        preprocess(config, uncased)
    assert list((tmp_path / "out").iterdir()) == []


def test_invalid_utf8_is_replaced_and_counted(uncased, tmp_path):
    text = require(WIKITEXT2 / "valid.txt").read_bytes()[:100_000]
    (tmp_path / "c.txt").write_bytes(text + b"\n = Bad = \n\n caf\xe9 au lait \xff is here .\n")
    result = preprocess(
        PreprocessConfig([tmp_path / "c.txt"], tmp_path / "o", dupe_factor=1, workers=1), uncased
    )
    assert result.invalid_utf8_lines == 1 and result.train_examples > 0


def test_jsonl_bad_lines_are_skipped_and_counted(uncased, tmp_path):
    records = [
        json.dumps({"title": "T", "text": f"T\nSentence {i} is here. Another one follows."})
        for i in range(40)
    ]
    records.insert(3, "{not json")
    records.insert(7, json.dumps({"no_text": 1}))
    (tmp_path / "c.jsonl").write_text("\n".join(records) + "\n")
    result = preprocess(
        PreprocessConfig(
            [tmp_path / "c.jsonl"], tmp_path / "o", dupe_factor=1, workers=1, max_seq_length=32
        ),
        uncased,
    )
    assert result.bad_json_lines == 2 and result.documents == 40
