"""TextDataset and PreprocessedDataset yield the same batch dict; text examples are deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli.data.datasets import PreprocessedDataset, TextDataset, collate
from bertcli.errors import UserError
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require

KEYS = {"input_ids", "token_type_ids", "attention_mask", "masked_lm_labels", "next_sentence_labels"}


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "small.txt"
    path.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:200_000])
    return path


def test_same_batch_dict_from_both(tok, corpus, tmp_path):
    text = TextDataset([corpus], tok, max_seq_length=64)
    result = preprocess(
        PreprocessConfig([corpus], tmp_path, max_seq_length=64, dupe_factor=1, workers=1), tok
    )
    shards = PreprocessedDataset(result.directory)
    for ds in (text, shards):
        batch = collate([ds[i] for i in range(4)])
        assert set(batch) == KEYS
        assert batch["input_ids"].shape == (4, 64) and batch["next_sentence_labels"].shape == (4,)
        assert all(str(v.dtype) == "torch.int64" for v in batch.values())
        labelled = batch["masked_lm_labels"] != -100
        assert labelled.any() and (batch["attention_mask"][labelled] == 1).all()


def test_text_examples_depend_only_on_seed_epoch_index(tok, corpus, tmp_path):
    a = TextDataset([corpus], tok, max_seq_length=64, seed=3, cache_dir=tmp_path)
    b = TextDataset([corpus], tok, max_seq_length=64, seed=3, cache_dir=tmp_path)
    assert list(tmp_path.glob("tokens-*.npz"))  # the second one read the cache
    for i in (0, 5, len(a) - 1):
        for key in KEYS:
            assert np.array_equal(a[i][key], b[i][key])
    first = [a[i]["masked_lm_labels"] for i in range(20)]
    a.set_epoch(1)
    second = [a[i]["masked_lm_labels"] for i in range(min(20, len(a)))]
    assert any(not np.array_equal(x, y) for x, y in zip(first, second))  # fresh masks
    a.set_epoch(0)
    assert all(np.array_equal(x, a[i]["masked_lm_labels"]) for i, x in enumerate(first))
    assert sorted(a.order(0).tolist()) == list(range(len(a)))


def test_text_dataset_rejects_empty(tok, tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        TextDataset([tmp_path / "e.txt"], tok)
