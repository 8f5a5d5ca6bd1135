"""Example creation against google-research/bert, on real WikiText-2.

The reference here is an independent port of `create_pretraining_data.py`'s
`create_instances_from_document`, `truncate_seq_pair` and `create_masked_lm_predictions`,
written from the published algorithm on token ids (Python lists, no spans), drawing from the
same `random.Random`: our instances must be identical to its, draw for draw. Its instances are
also written as DeepLearningExamples writes them and read back through DLE's reader (restated)
and through ours. The statistics tests below check the published rates on real data.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from bertcli.data.examples import (
    Corpus,
    MaskingSpec,
    assemble,
    document_pairs,
    exact_shuffle,
    mask_sequence,
)
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


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 127, 128, 129, 509, 4096, 4097, 5000])
def test_exact_shuffle_draws_what_random_shuffle_draws(n):
    for seed in range(5):
        ours, theirs = list(range(n)), list(range(n))
        rng, ref = random.Random(f"{seed}:{n}"), random.Random(f"{seed}:{n}")
        exact_shuffle(ours, rng)
        ref.shuffle(theirs)
        assert ours == theirs
        assert rng.getstate() == ref.getstate()  # the same number of draws, too


def test_pairs_follow_reference_rules():
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
    rng = random.Random(0)
    for _ in range(50):
        row, _, length = assemble(corpus.tokens, (0, 4, 4, len(ids), 0), 64, spec)
        original = row.copy()
        _, positions, _ = mask_sequence(row, length, spec, rng)
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


# ---- google-research/bert's create_pretraining_data.py, ported to token ids -------------------


def port_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        # front or back at random, to add more randomness and avoid biases
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def port_create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab,
                                      rng):  # fmt: skip
    cand_indexes = []
    for i, token in enumerate(tokens):
        if token == vocab["cls"] or token == vocab["sep"]:
            continue
        if vocab["whole_word"] and len(cand_indexes) >= 1 and vocab["continuation"][token]:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)
    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked_lms = []
    covered_indexes = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            if rng.random() < 0.8:
                masked_token = vocab["mask"]
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = rng.randint(0, vocab["size"] - 1)  # vocab_words[randint(...)]
            output_tokens[index] = masked_token
            masked_lms.append((index, tokens[index]))
    assert len(masked_lms) <= num_to_predict
    masked_lms.sort()
    return output_tokens, [i for i, _ in masked_lms], [label for _, label in masked_lms]


def port_create_instances_from_document(all_documents, document_index, max_seq_length,
                                        short_seq_prob, masked_lm_prob, max_predictions_per_seq,
                                        vocab, rng):  # fmt: skip
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                port_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1 and len(tokens_b) >= 1
                tokens = [vocab["cls"], *tokens_a, vocab["sep"], *tokens_b, vocab["sep"]]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = port_create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, vocab, rng
                )
                instances.append((tokens, segment_ids, is_random_next, positions, labels))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def port_create_training_instances(all_documents, dupe_factor, max_seq_length, short_seq_prob,
                                   masked_lm_prob, max_predictions_per_seq, vocab, rng):  # fmt: skip
    """The loop of create_training_instances after reading (documents already tokenized)."""
    all_documents = [d for d in all_documents if d]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(
                port_create_instances_from_document(
                    all_documents, document_index, max_seq_length, short_seq_prob,
                    masked_lm_prob, max_predictions_per_seq, vocab, rng,
                )  # fmt: skip
            )
    rng.shuffle(instances)
    return instances


def port_features(instances, max_seq_length, max_predictions_per_seq) -> dict:
    """DLE's write_instance_to_example_file: features padded with 0, as arrays for HDF5."""
    n = len(instances)
    out = {
        "input_ids": np.zeros((n, max_seq_length), dtype=np.int32),
        "input_mask": np.zeros((n, max_seq_length), dtype=np.int8),
        "segment_ids": np.zeros((n, max_seq_length), dtype=np.int8),
        "masked_lm_positions": np.zeros((n, max_predictions_per_seq), dtype=np.int32),
        "masked_lm_ids": np.zeros((n, max_predictions_per_seq), dtype=np.int32),
        "next_sentence_labels": np.zeros(n, dtype=np.int8),
    }
    for row, (tokens, segment_ids, is_random_next, positions, labels) in enumerate(instances):
        out["input_ids"][row, : len(tokens)] = tokens
        out["input_mask"][row, : len(tokens)] = 1
        out["segment_ids"][row, : len(segment_ids)] = segment_ids
        out["masked_lm_positions"][row, : len(positions)] = positions
        out["masked_lm_ids"][row, : len(labels)] = labels
        out["next_sentence_labels"][row] = 1 if is_random_next else 0
    return out


# ---- our instances equal the port's -----------------------------------------------------------


@pytest.fixture(scope="module")
def valid_documents(uncased):
    """WikiText-2 valid as our reader splits it, tokenized: documents -> sentences -> ids."""
    from bertcli.data.corpus import read_documents

    docs = list(read_documents([require(WIKITEXT2 / "valid.txt")], "auto"))
    flat = uncased.encode_batch([s for d in docs for s in d])
    out, k = [], 0
    for d in docs:
        ids = [s for s in flat[k : k + len(d)] if s]  # as the reference: empty lines dropped
        k += len(d)
        if ids:
            out.append(ids)
    return out


def _vocab(tok, whole_word):
    from bertcli.data.examples import continuation_mask

    cont = continuation_mask(tok)
    return {"cls": tok.cls_id, "sep": tok.sep_id, "mask": tok.mask_id, "size": tok.vocab_size,
            "whole_word": whole_word, "continuation": cont}  # fmt: skip


@pytest.mark.parametrize(
    "seq, prob, max_pred, short, whole_word",
    [(128, 0.15, 20, 0.1, False), (64, 0.3, 10, 0.5, True)],
)
def test_instances_equal_google_port(uncased, valid_documents, seq, prob, max_pred, short,
                                     whole_word):  # fmt: skip
    vocab = _vocab(uncased, whole_word)
    spec = MaskingSpec(
        uncased.vocab_size, uncased.cls_id, uncased.sep_id, uncased.pad_id, uncased.mask_id,
        masked_lm_prob=prob, max_predictions_per_seq=max_pred, whole_word_masking=whole_word,
        continuation=vocab["continuation"],
    )  # fmt: skip
    corpus = Corpus.from_documents(valid_documents)
    ours = []
    rng = random.Random(42)

    def mask(pair):
        ids, segments, length = assemble(corpus.tokens, pair, seq, spec)
        ids, positions, labels = mask_sequence(ids, length, spec, rng)
        ours.append((ids[:length].tolist(), segments[:length].tolist(), bool(pair[4]),
                     positions.tolist(), labels.tolist()))  # fmt: skip

    for _ in range(2):
        for d in range(corpus.num_documents):
            document_pairs(corpus, d, seq, short, rng, on_pair=mask)
    port_rng = random.Random(42)
    theirs = []
    for _ in range(2):
        for d in range(len(valid_documents)):
            theirs.extend(
                port_create_instances_from_document(
                    valid_documents, d, seq, short, prob, max_pred, vocab, port_rng
                )
            )
    assert len(ours) == len(theirs) > 1000
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"instance {i} differs"
    assert rng.random() == port_rng.random()  # and the same number of draws were taken


@pytest.fixture(scope="module")
def port_and_preprocess(uncased, tmp_path_factory):
    """preprocess (one worker) and the port over the same blocks, each with its block's rng."""
    from bertcli.data.corpus import read_documents
    from bertcli.data.examples import is_short_document
    from bertcli.preprocess import _blocks

    out = tmp_path_factory.mktemp("port")
    path = require(WIKITEXT2 / "valid.txt")
    config = PreprocessConfig([path], out / "ours", dupe_factor=2, workers=1, seed=7)
    shards = [read_shard(p) for p in find_shards(preprocess(config, uncased).directory)]
    vocab = _vocab(uncased, False)
    instances = []
    for namespace, block, documents in _blocks(read_documents([path], "auto"), 0.0, 7):
        tokenized = []
        for doc in documents:
            ids = uncased.encode_batch(doc)
            if not is_short_document(ids):  # our input rule (fewer than 2 tokens), not the port's
                tokenized.append([s for s in ids if s])
        rng = random.Random(f"7:{namespace}:{block}")
        instances.extend(
            port_create_training_instances(tokenized, 2, 128, 0.1, 0.15, 20, vocab, rng)
        )
    return shards, instances, out


def test_preprocess_shards_equal_google_port(port_and_preprocess):
    shards, instances, _ = port_and_preprocess
    expected = port_features(instances, 128, 20)
    for key, want in expected.items():
        got = np.concatenate([getattr(s, key) for s in shards])
        assert got.shape == want.shape, key
        assert np.array_equal(got, want), key


def test_dle_reader_reads_port_shards_as_ours(port_and_preprocess):
    """DLE's reader (restated) over shards written as DLE writes the port's instances."""
    import h5py
    import torch

    from bertcli.data.datasets import PreprocessedDataset
    from bertcli.data.shards import ShardArrays
    from tests.data.test_shards import write_like_dle
    from tests.train.test_pretrain_cli import dle_getitem

    _, instances, out = port_and_preprocess
    (out / "dle").mkdir()
    path = out / "dle" / "wikicorpus_en_training_0.hdf5"
    write_like_dle(path, ShardArrays(**port_features(instances[:64], 128, 20)))
    ours = PreprocessedDataset(out / "dle")
    assert len(ours) == 64
    with h5py.File(path) as f:
        for index in range(64):
            ids, segments, mask, labels, nsp = dle_getitem(f, index, 20)
            tokens, segment_ids, is_random_next, positions, label_ids = instances[index]
            assert ids[: len(tokens)].tolist() == tokens and int(nsp) == int(is_random_next)
            row = ours[index]
            assert torch.equal(torch.from_numpy(row["input_ids"]), ids)
            assert torch.equal(torch.from_numpy(row["token_type_ids"]), segments)
            assert torch.equal(torch.from_numpy(row["attention_mask"]), mask)
            ignore = labels == -1  # DLE's "not predicted"; ours is -100
            assert torch.equal(torch.from_numpy(row["masked_lm_labels"])[~ignore], labels[~ignore])
            assert (torch.from_numpy(row["masked_lm_labels"])[ignore] == -100).all()
            assert labels[~ignore].tolist() == label_ids


def test_masking_spec_from_tokenizer(uncased):
    from bertcli.data.examples import continuation_mask
    from bertcli.errors import UserError

    spec = MaskingSpec.from_tokenizer(uncased, 0.2, 7)
    ids = (uncased.vocab_size, uncased.cls_id, uncased.sep_id, uncased.pad_id, uncased.mask_id)
    assert (spec.vocab_size, spec.cls_id, spec.sep_id, spec.pad_id, spec.mask_id) == ids
    assert (spec.masked_lm_prob, spec.max_predictions_per_seq) == (0.2, 7)
    assert spec.continuation is None and not spec.whole_word_masking
    wwm = MaskingSpec.from_tokenizer(uncased, whole_word_masking=True)
    assert np.array_equal(wwm.continuation, continuation_mask(uncased))
    assert wwm.continuation[uncased.tokenizer.token_to_id("##ing")]
    with pytest.raises(UserError, match="--masked-lm-prob"):
        MaskingSpec.from_tokenizer(uncased, 1.0)
