"""DLE HDF5 format: dtypes, compression, round trip, DLE-written shards, validation errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from bertcli.data.datasets import PreprocessedDataset
from bertcli.data.shards import KEYS, ShardArrays, read_shard, shard_length, write_shard
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
