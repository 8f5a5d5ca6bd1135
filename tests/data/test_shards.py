"""DLE HDF5 format: dtypes, compression, round trip, DLE-written shards, validation errors."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from bertcli.data.datasets import PreprocessedDataset
from bertcli.data.shards import (
    DTYPES,
    KEYS,
    ShardArrays,
    check_header,
    read_shard,
    shard_length,
    write_shard,
)
from bertcli.errors import UserError


def random_arrays(n=10, seq=16, pred=3, seed=0) -> ShardArrays:
    gen = np.random.default_rng(seed)
    positions = np.sort(gen.choice(np.arange(1, seq), (n, pred)), axis=1)
    return ShardArrays(
        input_ids=gen.integers(0, 1000, (n, seq)).astype(np.int32),
        input_mask=np.ones((n, seq), np.int8),
        segment_ids=gen.integers(0, 2, (n, seq)).astype(np.int8),
        masked_lm_positions=positions.astype(np.int32),
        masked_lm_ids=gen.integers(1, 1000, (n, pred)).astype(np.int32),
        next_sentence_labels=gen.integers(0, 2, n).astype(np.int8),
    )


def test_written_dtypes_and_gzip(tmp_path):
    write_shard(tmp_path / "s.hdf5", random_arrays())
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert set(f.keys()) == set(KEYS)
        assert f["input_ids"].dtype == np.dtype("i4") and f["input_mask"].dtype == np.dtype("i1")
        assert f["segment_ids"].dtype == np.dtype("i1")
        assert f["masked_lm_positions"].dtype == np.dtype("i4")
        assert f["masked_lm_ids"].dtype == np.dtype("i4")
        assert f["next_sentence_labels"].dtype == np.dtype("i1")
        assert f["next_sentence_labels"].shape == (10,)
        assert f["input_ids"].compression == "gzip"
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("compression", ["gzip", None])
def test_round_trip(tmp_path, compression):
    arrays = random_arrays()
    write_shard(tmp_path / "s.hdf5", arrays, compression=compression)
    again = read_shard(tmp_path / "s.hdf5")
    for key in KEYS:
        assert np.array_equal(getattr(arrays, key), getattr(again, key))
    assert shard_length(tmp_path / "s.hdf5") == (10, 16, 3)


@pytest.mark.parametrize("compression,threads", [("gzip", 1), ("gzip", 3), (None, 1)])
def test_appender_chunks_cross_blocks_and_equal_h5py_filters(tmp_path, compression, threads):
    """Uneven blocks that start and end inside chunks: the pre-encoded chunks (byte shuffle and
    deflate done by us, written raw) decode through HDF5's own filters to exactly the rows
    appended, and the file holds the same bytes of data as h5py compressing them itself."""
    from bertcli.data.shards import ShardAppender

    blocks = [random_arrays(n, seq=128, pred=20, seed=n) for n in (1000, 30, 2500, 1, 1024)]
    appender = ShardAppender(
        tmp_path / "s.hdf5", compression=compression, attrs={"vocab_size": 7}, threads=threads
    )
    for block in blocks:
        appender.append({key: getattr(block, key) for key in KEYS})
    appender.close()
    with h5py.File(tmp_path / "s.hdf5") as ours, h5py.File(tmp_path / "h5py.hdf5", "w") as ref:
        assert ours.attrs["vocab_size"] == 7
        for key in KEYS:
            want = np.concatenate([getattr(b, key) for b in blocks])
            got = ours[key]
            assert got.shape == want.shape and got.dtype == want.dtype
            assert np.array_equal(got[:], want), key
            assert got.compression == compression and got.shuffle == (compression is not None)
            assert got.chunks[0] == (1024 if want.ndim == 2 else 65536)
            if compression:
                ref.create_dataset(key, data=want, chunks=got.chunks, maxshape=got.maxshape,
                                   compression="gzip", compression_opts=1, shuffle=True)  # fmt: skip
                ref.flush()
                for index in range(got.id.get_num_chunks()):
                    offset = got.id.get_chunk_info(index).chunk_offset
                    _, mine = got.id.read_direct_chunk(offset)
                    _, theirs = ref[key].id.read_direct_chunk(offset)
                    # the same shuffled bytes inside (zlib builds may deflate them differently)
                    assert zlib.decompress(mine) == zlib.decompress(theirs), (key, offset)
    assert not list(tmp_path.glob(".*tmp"))


def write_like_dle(path, arrays: ShardArrays):
    """What DLE's create_pretraining_data.py does (explicit dtype strings, gzip, 1-D labels)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("input_ids", data=arrays.input_ids, dtype="i4", compression="gzip")
        f.create_dataset("input_mask", data=arrays.input_mask, dtype="i1", compression="gzip")
        f.create_dataset("segment_ids", data=arrays.segment_ids, dtype="i1", compression="gzip")
        f.create_dataset(
            "masked_lm_positions", data=arrays.masked_lm_positions, dtype="i4", compression="gzip"
        )
        f.create_dataset("masked_lm_ids", data=arrays.masked_lm_ids, dtype="i4", compression="gzip")
        f.create_dataset(
            "next_sentence_labels", data=arrays.next_sentence_labels, dtype="i1", compression="gzip"
        )


def test_dle_shard_is_read_with_dle_label_rule(tmp_path):
    arrays = random_arrays(n=6, seq=12, pred=4)
    arrays.masked_lm_positions[2] = [3, 5, 0, 0]  # padded row: only 2 predictions
    arrays.masked_lm_ids[2] = [7, 9, 0, 0]
    (tmp_path / "dle").mkdir()
    write_like_dle(tmp_path / "dle" / "books_wiki_en_corpus_training_0.hdf5", arrays)
    ds = PreprocessedDataset(tmp_path / "dle")
    assert len(ds) == 6 and ds.max_seq_length == 12
    row = ds[2]
    expected = np.full(12, -100)
    expected[3], expected[5] = 7, 9
    assert np.array_equal(row["masked_lm_labels"], expected)
    assert np.array_equal(row["input_ids"], arrays.input_ids[2])
    assert row["next_sentence_labels"] == arrays.next_sentence_labels[2]
    assert sorted(ds.order(0).tolist()) == list(range(6))
    assert not np.array_equal(ds.order(0), ds.order(1)) or len(ds) < 3


def test_missing_key_and_bad_shapes_are_named(tmp_path):
    arrays = random_arrays()
    write_shard(tmp_path / "a.hdf5", arrays)
    with h5py.File(tmp_path / "a.hdf5", "a") as f:
        del f["masked_lm_ids"]
    with pytest.raises(UserError, match=r"a.hdf5: .*missing masked_lm_ids"):
        PreprocessedDataset(tmp_path)
    (tmp_path / "a.hdf5").unlink()
    arrays.input_mask = arrays.input_mask[:, :5]
    write_shard(tmp_path / "b.hdf5", arrays)
    with pytest.raises(UserError, match=r"b.hdf5: input_mask has shape"):
        PreprocessedDataset(tmp_path)
    (tmp_path / "b.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="not a readable HDF5 shard"):
        PreprocessedDataset(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        PreprocessedDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        PreprocessedDataset(tmp_path / "empty")


# Each bad value, where it sits, and the words the one-line error must contain.
BAD_VALUES = {
    "id-too-large": (
        "input_ids",
        (4, 7),
        1000,
        r"input_ids holds 1,000 \(example 4\), but ids "
        r"must be below 1,000; likely preprocessed with a larger vocabulary",
    ),
    "label-too-large": ("masked_lm_ids", (2, 1), 5000, r"masked_lm_ids holds 5,000 \(example 2\)"),
    "negative-id": ("input_ids", (1, 0), -3, r"input_ids holds -3 .*cannot be negative"),
    "negative-label": ("masked_lm_ids", (0, 0), -1, r"masked_lm_ids holds -1"),
    "position-beyond": (
        "masked_lm_positions",
        (3, 2),
        16,
        r"masked_lm_positions holds 16 .*below the sequence "
        r"length 16",
    ),
    "position-negative": (
        "masked_lm_positions",
        (5, 0),
        -2,
        r"masked_lm_positions holds -2 .*cannot be negative",
    ),
    "segment-2": ("segment_ids", (6, 9), 2, r"segment_ids holds 2 \(example 6\).*two segments"),
    "nsp-2": ("next_sentence_labels", (8,), 2, r"next_sentence_labels holds 2 .*NSP label"),
    "mask-3": ("input_mask", (9, 1), 3, r"input_mask holds 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_named_when_the_shard_is_opened(tmp_path, case):
    key, where, value, needle = BAD_VALUES[case]
    arrays = random_arrays()
    getattr(arrays, key)[where] = value
    write_shard(tmp_path / "bad.hdf5", arrays)
    assert shard_length(tmp_path / "bad.hdf5") == (10, 16, 3)  # the header alone looks fine
    with pytest.raises(UserError, match=r"bad.hdf5: " + needle):
        read_shard(tmp_path / "bad.hdf5", vocab_size=1000)
    with pytest.raises(UserError, match=needle):  # the first shard: at start, before any step
        PreprocessedDataset(tmp_path).check_vocab(1000)
    write_shard(tmp_path / "a.hdf5", random_arrays(seed=1))  # now the bad shard comes second
    ds = PreprocessedDataset(tmp_path)
    ds.check_vocab(1000)
    assert ds[9]["input_ids"].shape == (16,)
    with pytest.raises(UserError, match=needle):  # when it is opened
        ds[10]


def test_vocabulary_bound_is_the_models(tmp_path):
    arrays = random_arrays()  # ids below 1000
    write_shard(tmp_path / "s.hdf5", arrays)
    read_shard(tmp_path / "s.hdf5", vocab_size=1000)  # fits exactly: max id 999 < 1000
    top = int(max(arrays.input_ids.max(), arrays.masked_lm_ids.max()))
    read_shard(tmp_path / "s.hdf5", vocab_size=top + 1)
    with pytest.raises(UserError, match=rf"holds {top:,} .*below {top:,}"):
        read_shard(tmp_path / "s.hdf5", vocab_size=top)
    read_shard(tmp_path / "s.hdf5")  # no vocabulary given: only the vocabulary-free checks


def test_header_records_the_vocabulary_and_is_checked_at_start(tmp_path):
    arrays = random_arrays()
    arrays.input_ids[:] %= 900
    arrays.masked_lm_ids[:] %= 900
    write_shard(tmp_path / "a.hdf5", arrays, attrs={"vocab_size": 30522})
    with h5py.File(tmp_path / "a.hdf5") as f:
        assert int(f.attrs["vocab_size"]) == 30522
    with pytest.raises(
        UserError, match="a.hdf5: preprocessed with a 30,522-token vocabulary; this model has 2,000"
    ):
        check_header(tmp_path / "a.hdf5", 2000)
    check_header(tmp_path / "a.hdf5", 30522)
    check_header(tmp_path / "a.hdf5", 30528)  # DLE pads the embedding table to a multiple of 8
    ds = PreprocessedDataset(tmp_path)
    with pytest.raises(UserError, match="30,522-token vocabulary; this model has 2,000"):
        ds.check_vocab(2000)
    # the header names the cause even where the values alone are read
    arrays.input_ids[0, 3] = 2500
    write_shard(tmp_path / "a.hdf5", arrays, attrs={"vocab_size": 30522})
    with pytest.raises(UserError, match="2,500 .*30,522-token vocabulary; this model has 2,000"):
        read_shard(tmp_path / "a.hdf5", vocab_size=2000)


def test_preprocess_writes_the_tokenizer_vocabulary_into_every_header(tmp_path):
    from bertcli.preprocess import PreprocessConfig, preprocess
    from bertcli.tokenizer import train_tokenizer
    from tests.conftest import WIKITEXT2, require

    (tmp_path / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text()[:30_000])
    tok, _ = train_tokenizer("wordpiece", [tmp_path / "c.txt"], 600, tmp_path / "tok")
    config = PreprocessConfig(
        inputs=[tmp_path / "c.txt"],
        out=tmp_path / "out",
        workers=1,
        shard_size=50,
        eval_fraction=0.2,
        dupe_factor=1,
        max_seq_length=32,
    )
    result = preprocess(config, tok)
    shards = sorted((tmp_path / "out").rglob("*.hdf5"))
    assert len(shards) >= 3 and any("eval" in p.name for p in shards)
    for path in shards:
        with h5py.File(path) as f:
            assert int(f.attrs["vocab_size"]) == tok.vocab_size == 600
        read_shard(path, vocab_size=600)  # our own output passes every value check
    assert result.train_shards >= 2


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((10**12, 128), "declares .* bytes of data, more than a"),
        ((1000, 10**6), "sequences of 1,000,000 tokens"),
    ],
)
def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path, shape, match):
    path = tmp_path / "lie.hdf5"
    n, seq = shape
    with h5py.File(path, "w") as f:  # nothing written: the header alone declares the sizes
        for key in ("input_ids", "input_mask", "segment_ids"):
            f.create_dataset(key, shape=(n, seq), dtype="i4", chunks=(1, min(seq, 128)))
        for key in ("masked_lm_positions", "masked_lm_ids"):
            f.create_dataset(key, shape=(n, 20), dtype="i4", chunks=(1, 20))
        f.create_dataset("next_sentence_labels", shape=(n,), dtype="i1", chunks=(1,))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=match):
        read_shard(path)  # before: MemoryError allocating 512 TB
    with pytest.raises(UserError, match=match):
        shard_length(path)


def test_real_shards_pass_the_size_check(tmp_path):
    """Zeros compress best: a shard of all-padding rows is still far below deflate's limit."""
    path = tmp_path / "zeros.hdf5"
    rows = 4096
    arrays = {
        key: np.zeros((rows, 128) if key in ("input_ids", "input_mask", "segment_ids") else (
            (rows, 20) if key.startswith("masked") else (rows,)), dtype=DTYPES[key])
        for key in KEYS
    }  # fmt: skip
    with h5py.File(path, "w") as f:
        for key, data in arrays.items():
            f.create_dataset(key, data=data, compression="gzip", compression_opts=9)
    assert shard_length(path) == (rows, 128, 20)
