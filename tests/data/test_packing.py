"""MLM-only data is packed text (RoBERTa FULL-SENTENCES / run_mlm group_texts), in preprocess
shards that DeepLearningExamples' reader loads, and in `pretrain --data-text --no-nsp`."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bertcli.data.corpus import read_documents
from bertcli.data.shards import find_shards
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require
from tests.train.test_pretrain_cli import dle_getitem


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


def group_texts(tok, path, seq: int) -> list[list[int]]:
    """transformers' run_mlm `group_texts`, restated: documents joined, each ending in [SEP]
    (the last one's dropped: the window's own [SEP] closes it), cut every seq - 2 tokens."""
    stream: list[int] = []
    for doc in read_documents([path]):
        ids = [i for sentence in tok.encode_batch(doc) for i in sentence]
        if len(ids) >= 2:
            stream.extend(ids + [tok.sep_id])
    stream = stream[:-1]
    width = seq - 2
    return [[tok.cls_id, *stream[k : k + width], tok.sep_id] for k in range(0, len(stream), width)]


def test_preprocess_no_nsp_packs_and_dles_reader_loads_it(tok, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:60_000])
    seq, pred, dupe = 64, 10, 2
    result = preprocess(
        PreprocessConfig(
            [corpus], tmp_path / "out", seq, pred, dupe_factor=dupe, workers=1, nsp=False
        ),
        tok,
    )
    assert result.directory.endswith("_packed_no_nsp") and result.random_next_fraction == 0
    expected = group_texts(tok, corpus, seq)  # the corpus fits one block
    assert result.train_examples == dupe * len(expected)
    seen = []
    for path in find_shards(result.directory):
        with h5py.File(path) as f:
            for i in range(len(f["input_ids"])):
                ids, segments, mask, labels, nsp = dle_getitem(f, i, pred)
                assert nsp.item() == 0 and not segments.any()
                restored = ids.clone()
                restored[labels != -1] = labels[labels != -1]  # undo the masking
                length = int(mask.sum())
                assert 0 < (labels != -1).sum() <= pred
                seen.append(restored[:length].tolist())
    assert sorted(seen) == sorted(expected * dupe)


def test_pretrain_text_no_nsp_trains_on_packed_text(invoke, tmp_path):
    corpus = tmp_path / "train.txt"
    corpus.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:40_000])
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    out = tmp_path / "run"
    result = invoke(
        "pretrain", "--data-text", "--train-data", corpus, "--vocab-file", vocab,
        "--preset", "tiny", "--max-seq-length", "32", "--batch-size", "4", "--max-steps", "2",
        "--no-nsp", "--out", out, "--device", "cpu", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows and all('"nsp_loss": null' in row for row in rows if '"step"' in row)
    # the run's token store is in the shared cache: a restart (or another run) reads it
    (store,) = (tmp_path / "cache" / "tokens").glob("tokens-*")
    assert (store / "stream_start.npy").is_file() and (store / "meta.json").is_file()
    assert np.load(store / "tokens.npy", mmap_mode="r").shape[0] > 5000


def test_preprocess_counts_what_truncation_drops(tok, tmp_path):
    """Shards stay google-exact (a sentence longer than a segment is truncated); the loss is
    counted. Packing cuts no sentence, so it reports none."""
    long = " ".join(["word7"] * 150)
    short = "the cat sat on the mat .\nit was warm ."
    (tmp_path / "c.txt").write_text(f"{short}\n{long}\n\n{short}\n\n{short}\n{long}\n")
    length = len(tok.encode_batch([long])[0])
    assert length == 300
    for nsp, expected in ((True, (2, 2 * (length - 61))), (False, (0, 0))):
        config = PreprocessConfig(
            [tmp_path / "c.txt"], tmp_path / f"o{nsp}", 64, workers=1, nsp=nsp
        )
        result = preprocess(config, tok)
        assert (result.long_sentences, result.long_sentence_tokens_dropped) == expected
