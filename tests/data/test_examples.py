"""Example creation statistics on real WikiText-2, against BERT's reference rules."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli.data.examples import Corpus, MaskingSpec, assemble, document_pairs, mask_sequence
from bertcli.data.shards import find_shards, read_shard
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require


@pytest.fixture(scope="module")
def uncased():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


@pytest.fixture(scope="module")
def valid_shard(uncased, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    config = PreprocessConfig([require(WIKITEXT2 / "valid.txt")], out, dupe_factor=2, workers=2)
    result = preprocess(config, uncased)
    return read_shard(find_shards(result.directory)[0]), result


def test_every_row_is_framed(valid_shard, uncased):
    shard, _ = valid_shard
    CLS, SEP = uncased.cls_id, uncased.sep_id
    for row in range(len(shard)):
        length = int(shard.input_mask[row].sum())
        assert shard.input_mask[row, :length].all() and not shard.input_mask[row, length:].any()
        ids, seg = shard.input_ids[row], shard.segment_ids[row]
        positions = shard.masked_lm_positions[row]
        count = int(np.count_nonzero(positions))
        original = ids.copy()
        original[positions[:count]] = shard.masked_lm_ids[row, :count]
        assert original[0] == CLS and original[length - 1] == SEP
        seps = np.flatnonzero(original[:length] == SEP)
        assert len(seps) == 2, row
        assert (seg[: seps[0] + 1] == 0).all() and (seg[seps[0] + 1 : length] == 1).all()
        assert (seg[length:] == 0).all() and (ids[length:] == 0).all()
        assert length <= 128


def test_masking_counts_and_positions(valid_shard, uncased):
    shard, _ = valid_shard
    for row in range(len(shard)):
        length = int(shard.input_mask[row].sum())
        positions = shard.masked_lm_positions[row]
        count = int(np.count_nonzero(positions))
        assert count == min(20, max(1, int(round(length * 0.15))))
        assert (np.diff(positions[:count]) > 0).all()  # ascending
        assert (positions[count:] == 0).all() and (shard.masked_lm_ids[row, count:] == 0).all()
        assert (positions[:count] < length).all() and (positions[:count] > 0).all()
        labels = shard.masked_lm_ids[row, :count]
        assert not np.isin(labels, [uncased.cls_id, uncased.sep_id]).any()


def test_80_10_10_and_random_next(valid_shard, uncased):
    shard, result = valid_shard
    rows = np.repeat(np.arange(len(shard)), 20).reshape(len(shard), 20)
    valid = shard.masked_lm_positions != 0
    shown = shard.input_ids[rows[valid], shard.masked_lm_positions[valid]]
    truth = shard.masked_lm_ids[valid]
    masked = np.mean(shown == uncased.mask_id)
    unchanged = np.mean(shown == truth)
    other = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.01, masked
    assert abs(unchanged - 0.1) < 0.01, unchanged
    assert abs(other - 0.1) < 0.01, other
    masked_fraction = valid.sum() / shard.input_mask.sum()
    assert 0.13 < masked_fraction < 0.16
    nsp = shard.next_sentence_labels.mean()
    assert 0.45 < nsp < 0.6, nsp
    assert abs(result.random_next_fraction - nsp) < 0.05  # includes eval-free single shard


def test_pairs_follow_reference_rules():
    import random

    docs = [[[1] * 5, [2] * 7, [3] * 4, [4] * 9], [[5] * 3, [6] * 6], [[7] * 20]]
    corpus = Corpus.from_documents(docs)
    rng = random.Random(0)
    pairs = [p for d in range(3) for p in document_pairs(corpus, d, 16, 0.0, rng)]
    assert pairs
    for a0, a1, b0, b1, is_random in pairs:
        assert (a1 - a0) + (b1 - b0) <= 13 and a1 > a0 and b1 > b0
        if not is_random:
            assert b0 >= a1  # B continues A in the same document


def test_whole_word_masking_masks_whole_words(uncased, tmp_path):
    from bertcli.data.examples import continuation_mask

    cont = continuation_mask(uncased)
    spec = MaskingSpec(
        uncased.vocab_size,
        uncased.cls_id,
        uncased.sep_id,
        uncased.pad_id,
        uncased.mask_id,
        masked_lm_prob=0.3,
        max_predictions_per_seq=40,
        whole_word_masking=True,
        continuation=cont,
    )
    text = "unbelievably tokenization of extraordinarily hyperparameterized embeddings"
    ids = np.asarray(uncased.encode_batch([text])[0], dtype=np.int32)
    corpus = Corpus(ids, np.asarray([0, len(ids)]), np.asarray([0, 1]))
    gen = np.random.default_rng(0)
    for _ in range(50):
        row, _, length = assemble(corpus.tokens, (0, 4, 4, len(ids), 0), 64, spec)
        original = row.copy()
        _, positions, _ = mask_sequence(row, length, spec, gen)
        chosen = set(positions.tolist())
        for p in chosen:  # a masked piece's whole word is masked
            if cont[original[p]]:
                assert p - 1 in chosen or original[p - 1] == uncased.sep_id
            if p + 1 < length and cont[original[p + 1]]:
                assert p + 1 in chosen


def test_output_identical_across_worker_counts(uncased, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text((require(WIKITEXT2) / "valid.txt").read_text()[:400_000])
    shards = []
    for workers in (1, 2):
        config = PreprocessConfig(
            [corpus], tmp_path / f"w{workers}", dupe_factor=1, workers=workers, shard_size=700
        )
        shards.append([read_shard(p) for p in find_shards(preprocess(config, uncased).directory)])
    assert len(shards[0]) == len(shards[1]) > 1
    for a, b in zip(*shards):
        for key in (
            "input_ids",
            "segment_ids",
            "masked_lm_positions",
            "masked_lm_ids",
            "next_sentence_labels",
        ):
            assert np.array_equal(getattr(a, key), getattr(b, key))
