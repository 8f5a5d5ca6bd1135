"""TextDataset and PreprocessedDataset yield the same batch dict; text examples are deterministic,
tokenized once into a memory-mapped store, paired lazily per block, or packed for MLM-only."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from bertcli.data.corpus import read_documents
from bertcli.data.datasets import PreprocessedDataset, TextDataset, collate
from bertcli.data.token_store import TokenStore
from bertcli.errors import UserError
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require

KEYS = {
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "masked_lm_labels",
    "masked_lm_positions",
    "next_sentence_labels",
}


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


@pytest.fixture()
def counted(tok, monkeypatch):
    """The tokenizer, with every sentence it is asked to encode counted."""
    calls = []
    encode = type(tok).encode_batch

    def counting(self, texts):
        calls.append(len(texts))
        return encode(self, texts)

    monkeypatch.setattr(type(tok), "encode_batch", counting)
    return calls


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "small.txt"
    path.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:200_000])
    return path


def check_positions(batch, predictions: int) -> None:
    """masked_lm_positions: the labelled positions ascending, then 0s (position 0 is [CLS])."""
    assert batch["masked_lm_positions"].shape[1] == predictions
    for labels, positions in zip(batch["masked_lm_labels"], batch["masked_lm_positions"]):
        labelled = np.flatnonzero(labels.numpy() != -100)
        positions = positions.numpy()
        assert labelled.size and 0 not in labelled
        assert np.array_equal(positions[: labelled.size], labelled)
        assert not positions[labelled.size :].any()


def test_same_batch_dict_from_both(tok, corpus, tmp_path):
    text = TextDataset([corpus], tok, max_seq_length=64, max_predictions_per_seq=12)
    result = preprocess(
        PreprocessConfig([corpus], tmp_path, max_seq_length=64, dupe_factor=1, workers=1), tok
    )
    shards = PreprocessedDataset(result.directory)
    for ds in (text, shards):
        batch = collate([ds[i] for i in range(4)])
        # the shard side gains masked_lm_positions with the several-directories work
        assert set(batch) == KEYS or (ds is shards and set(batch) == KEYS - {"masked_lm_positions"})
        assert batch["input_ids"].shape == (4, 64) and batch["next_sentence_labels"].shape == (4,)
        assert all(str(v.dtype) == "torch.int64" for v in batch.values())
        labelled = batch["masked_lm_labels"] != -100
        assert labelled.any() and (batch["attention_mask"][labelled] == 1).all()
    check_positions(collate([text[i] for i in range(len(text))]), 12)


def test_text_examples_depend_only_on_seed_epoch_index(tok, corpus, tmp_path, counted):
    a = TextDataset([corpus], tok, max_seq_length=64, seed=3, cache_dir=tmp_path)
    assert sum(counted) > 1000  # every sentence went through the tokenizer once
    counted.clear()
    b = TextDataset([corpus], tok, max_seq_length=64, seed=3, cache_dir=tmp_path)
    assert counted == []  # the second one read the cache: no tokenizer call at all
    assert len(list(tmp_path.glob("tokens-*"))) == 1
    # pairs are made lazily per block: reading in another order, with another epoch in between,
    # must not change an example
    b.set_epoch(1)
    b[len(b) - 1]
    b.set_epoch(0)
    for i in (len(a) - 1, 5, 0):
        for key in KEYS:
            assert np.array_equal(a[i][key], b[i][key])
    first = [a[i]["masked_lm_labels"] for i in range(20)]
    a.set_epoch(1)
    second = [a[i]["masked_lm_labels"] for i in range(min(20, len(a)))]
    assert any(not np.array_equal(x, y) for x, y in zip(first, second))  # fresh masks
    a.set_epoch(0)
    assert all(np.array_equal(x, a[i]["masked_lm_labels"]) for i, x in enumerate(first))
    assert sorted(a.order(0).tolist()) == list(range(len(a)))
    assert not np.array_equal(a.order(0), a.order(1))


def test_a_changed_corpus_is_tokenized_again(tok, tmp_path, counted):
    path = tmp_path / "c.txt"
    text = require(WIKITEXT2 / "valid.txt").read_text()[:30_000]
    path.write_text(text)
    cache = tmp_path / "cache"
    before = TextDataset([path], tok, max_seq_length=32, cache_dir=cache, nsp=False)
    # one word changed, same size, and the old mtime put back: the content hash must see it
    stamp = path.stat().st_mtime_ns
    changed = text.replace(" the ", " tha ", 1)
    assert len(changed) == len(text)
    path.write_text(changed)
    os.utime(path, ns=(stamp, stamp))
    counted.clear()
    after = TextDataset([path], tok, max_seq_length=32, cache_dir=cache, nsp=False)
    assert counted, "a changed file must be re-tokenized"
    assert not np.array_equal(before.corpus.tokens, after.corpus.tokens)
    assert [after.store_dir] == list(cache.glob("tokens-*"))  # the stale store is gone
    other = tmp_path / "other.txt"
    other.write_text(text)
    TextDataset([other], tok, max_seq_length=32, cache_dir=cache, nsp=False)
    path.write_text(changed + "one more line .\n")  # and a grown one
    counted.clear()
    grown = TextDataset([path], tok, max_seq_length=32, cache_dir=cache, nsp=False)
    assert counted and grown.store_dir != after.store_dir
    # another corpus's store stays
    assert len(list(cache.glob("tokens-*"))) == 2 and not after.store_dir.exists()


def test_store_matches_the_tokenizer_and_is_mapped(tok, corpus, tmp_path):
    ds = TextDataset([corpus], tok, max_seq_length=64, cache_dir=tmp_path)
    store = TokenStore.open(ds.store_dir)
    assert isinstance(store.tokens, np.memmap) and store.tokens.dtype == np.uint16
    docs = list(read_documents([corpus]))
    expected = [s for doc in docs for s in tok.encode_batch(doc) if s]
    assert store.sent_start[-1] == sum(len(s) for s in expected)
    for s in (0, 7, len(expected) - 1):
        assert store.tokens[store.sent_start[s] : store.sent_start[s + 1]].tolist() == expected[s]
    assert store.doc_start[-1] == len(expected) and len(store.doc_start) == len(docs) + 1
    # DataLoader workers re-map the store: the pickle holds no token array
    blob = pickle.dumps(ds)
    assert len(blob) < store.tokens.nbytes / 4
    clone = pickle.loads(blob)
    for key in KEYS:
        assert np.array_equal(clone[3][key], ds[3][key])


def test_short_documents_follow_one_rule(tok, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello\n\nthe cat sat on the mat .\nit was warm .\n\nworld\n\n" * 3)
    text = TextDataset([path], tok, max_seq_length=32, cache_dir=tmp_path / "cache")
    shards = preprocess(PreprocessConfig([path], tmp_path / "s", max_seq_length=32, workers=1), tok)
    assert text.stats.skipped_documents == shards.skipped_documents == 6
    assert text.stats.documents == 3


def test_lazy_pairing_matches_one_whole_corpus_pass(tok, corpus, monkeypatch):
    """Per-block pairing gives an epoch like BERT's one pass over the corpus: about as many
    examples, covering as much of the text (A and same-document B spans)."""
    import random

    import bertcli.data.token_store as token_store
    from bertcli.data.examples import document_pairs

    # small blocks, and capacities estimated for most of them (not measured)
    monkeypatch.setattr(token_store, "BLOCK_TOKENS", 2048)
    monkeypatch.setattr(TextDataset, "CALIBRATION_BLOCKS", 3)
    ds = TextDataset([corpus], tok, max_seq_length=128, short_seq_prob=0.0)

    def coverage(pairs):
        covered = np.zeros(len(ds.corpus.tokens), dtype=bool)
        for a0, a1, b0, b1, is_random in pairs:
            covered[a0:a1] = True
            if not is_random:
                covered[b0:b1] = True
        return covered.mean()

    rng = random.Random(0)
    reference = [
        p for d in range(ds.corpus.num_documents) for p in document_pairs(ds.corpus, d, 128, 0, rng)
    ]
    lazy = [ds._pair(*_block_slot(ds, i)) for i in range(len(ds))]
    assert len(ds.capacity) > 5  # several blocks, so the test means something
    assert abs(len(lazy) - len(reference)) < 0.05 * len(reference)
    # capacities estimated from 3 of 9 tiny blocks drop a few pairs (a fresh few every epoch)
    assert coverage(lazy) > coverage(reference) - 0.05
    ds.set_epoch(1)
    assert coverage([ds._pair(*_block_slot(ds, i)) for i in range(len(ds))]) > 0.85


def _block_slot(ds, i):
    block = int(np.searchsorted(ds.index_start, i, side="right") - 1)
    return block, i - int(ds.index_start[block])


def test_an_overlong_sentence_is_split_not_truncated(tok, tmp_path):
    words = " ".join(f"word{i % 50}" for i in range(20_000))  # one ~60,000-token "sentence"
    path = tmp_path / "long.txt"
    path.write_text("a short first document .\nwith two sentences .\n\n" + words + "\n")
    ds = TextDataset([path], tok, max_seq_length=64, short_seq_prob=0.0)
    long_doc = int(ds.corpus.sent_start[ds.corpus.doc_start[1]])
    total = len(ds.corpus.tokens) - long_doc
    assert total >= 40_000
    seen = np.zeros(len(ds.corpus.tokens), dtype=bool)
    for i in range(len(ds)):
        a0, a1, b0, b1, is_random = ds._pair(*_block_slot(ds, i))
        seen[a0:a1] = True
        if not is_random:
            seen[b0:b1] = True
    # the reference truncates the sentence to one example (0.1% of it); split, it is all used
    assert seen[long_doc:].mean() > 0.85, seen[long_doc:].mean()


def test_no_nsp_packs_text_like_group_texts(tok, corpus, tmp_path):
    seq = 64
    ds = TextDataset([corpus], tok, max_seq_length=seq, nsp=False, cache_dir=tmp_path)
    # the reference: transformers' run_mlm group_texts over documents each ending in [SEP]
    stream: list[int] = []
    for doc in read_documents([corpus]):
        ids = [i for s in tok.encode_batch(doc) for i in s]
        if len(ids) >= 2:
            stream.extend(ids + [tok.sep_id])
    stream = stream[:-1]
    width = seq - 2
    windows = [stream[k : k + width] for k in range(0, len(stream), width)]
    assert len(ds) == len(windows)
    for i in (0, 1, len(ds) // 2, len(ds) - 1):
        example = ds[i]
        ids = example["input_ids"].copy()
        labelled = example["masked_lm_labels"] != -100
        ids[labelled] = example["masked_lm_labels"][labelled]  # undo the masking
        length = int(example["attention_mask"].sum())
        assert ids[:length].tolist() == [tok.cls_id, *windows[i], tok.sep_id]
        assert not example["token_type_ids"].any() and example["next_sentence_labels"] == 0
    assert (collate([ds[i] for i in range(len(ds) - 1)])["attention_mask"] == 1).all()
    assert sorted(ds.order(3).tolist()) == list(range(len(ds)))


def test_text_dataset_rejects_empty(tok, tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        TextDataset([tmp_path / "e.txt"], tok)


def test_unwritable_cache_is_one_line(tok, corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")  # not a directory: unwritable even for root
    with pytest.raises(UserError, match="cannot write the token cache in .*a-file"):
        TextDataset([corpus], tok, cache_dir=blocker / "cache")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UserError, match="cannot write the token cache"):
                TextDataset([corpus], tok, cache_dir=locked / "cache")
        finally:
            locked.chmod(0o700)


def test_a_failed_build_leaves_nothing(tok, corpus, tmp_path):
    from bertcli.console import Reporter

    class Interrupted(Reporter):
        def advance(self, amount=1, **fields):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TextDataset([corpus], tok, cache_dir=tmp_path / "cache", reporter=Interrupted())
    # only the (empty) lock files of the shared cache remain: no store, no temporary
    left = [p for p in (tmp_path / "cache").iterdir() if p.name != ".locks"]
    assert left == []


def test_a_damaged_store_is_rebuilt(tok, corpus, tmp_path, counted):
    TextDataset([corpus], tok, max_seq_length=64, cache_dir=tmp_path)
    (store,) = tmp_path.glob("tokens-*")
    (store / "tokens.npy").write_bytes(b"\x93NUMPY garbage")
    counted.clear()
    ds = TextDataset([corpus], tok, max_seq_length=64, cache_dir=tmp_path)
    assert counted and len(ds) > 0


def test_a_huge_line_is_refused(tok, tmp_path, monkeypatch):
    import bertcli.data.corpus as corpus_module

    monkeypatch.setattr(corpus_module, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"word " * (300_000))  # 1.5 MB, no newline
    with pytest.raises(UserError, match="longer than 1 MiB"):
        TextDataset([path], tok, cache_dir=tmp_path / "cache")


def test_a_rank_that_cannot_see_rank_zeros_store_stops_in_one_line(tok, corpus, tmp_path, counted):
    # under torchrun only rank 0 builds; the others open (build=False) and never tokenize
    with pytest.raises(UserError, match="rank 0 wrote: the token cache .* shared"):
        TextDataset([corpus], tok, cache_dir=tmp_path / "not-shared", build=False)
    assert counted == []
    built = TextDataset([corpus], tok, max_seq_length=64, cache_dir=tmp_path / "shared")
    counted.clear()
    other = TextDataset(
        [corpus], tok, max_seq_length=64, cache_dir=tmp_path / "shared", build=False
    )
    assert counted == [] and np.array_equal(other[1]["input_ids"], built[1]["input_ids"])


@pytest.mark.parametrize("case", ["huge line", "unwritable cache"])
def test_pretrain_says_it_in_one_line(invoke, corpus, tmp_path, monkeypatch, case):
    import bertcli.data.corpus as corpus_module

    train, out = corpus, tmp_path / "run"
    if case == "huge line":
        monkeypatch.setattr(corpus_module, "MAX_LINE_BYTES", 1 << 20)
        train = tmp_path / "one-line.txt"
        train.write_bytes(b"word " * 300_000)
        needle = "line 1 is longer than 1 MiB"
    cache = tmp_path / "cache"
    if case == "unwritable cache":
        cache.write_text("a file where the cache directory goes\n")
        needle = "cannot write the token cache in"
    result = invoke(
        "pretrain", "--data-text", "--train-data", train, "--out", out, "--preset", "tiny",
        "--vocab-file", require(VOCAB_DIR / "bert-base-uncased.txt"), "--max-steps", "1",
        "--device", "cpu", "--cache-dir", cache,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not list(cache.glob("tokens/tokens-*"))  # no store left half-built under its name


def test_index_batches_match_a_sliced_list_and_skip_exactly():
    from bertcli.data.datasets import IndexBatches

    order = np.random.default_rng(0).permutation(103)
    for start in (0, 5, 100, 103):
        expected = [order[i : i + 5].tolist() for i in range(start, len(order), 5)]
        batches = IndexBatches(order, 5, start=start)
        assert list(batches) == expected
        assert len(batches) == len(expected)
