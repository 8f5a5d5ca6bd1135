"""HDF5 shards from strangers: any bytes, and real HDF5 files of any shape, dtype and value."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from bertcli.data.shards import KEYS, check_header, read_shard, shard_length
from tests.fuzz.conftest import FUZZ, read_within_bounds
from tests.fuzz.strategies import mutated


def _valid_shard() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with h5py.File(buffer, "w") as f:
        f.create_dataset(
            "input_ids", data=rng.integers(0, 100, (4, 16)), dtype="i4", compression="gzip"
        )
        f.create_dataset("input_mask", data=np.ones((4, 16)), dtype="i1")
        f.create_dataset("segment_ids", data=np.zeros((4, 16)), dtype="i1")
        f.create_dataset("masked_lm_positions", data=np.tile(np.arange(1, 4), (4, 1)), dtype="i4")
        f.create_dataset("masked_lm_ids", data=rng.integers(0, 100, (4, 3)), dtype="i4")
        f.create_dataset("next_sentence_labels", data=np.zeros(4), dtype="i1")
        f.attrs["vocab_size"] = 100
    return buffer.getvalue()


_SHARD = _valid_shard()
DIMS = st.sampled_from([0, 1, 2, 3, 4, 16, 10**6, 10**12, 2**40])
DTYPES = st.sampled_from(["i1", "i2", "i4", "i8", "u1", "u8", "f4", "f8", "S4", "bool"])


def _read_all(path: Path) -> None:
    read_within_bounds(lambda: shard_length(path))
    read_within_bounds(lambda: read_shard(path, vocab_size=100))
    read_within_bounds(lambda: check_header(path, 100))


@FUZZ
@given(data=mutated(_SHARD) | st.binary(max_size=2048))
def test_shard_bytes(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "s.hdf5"
        path.write_bytes(data)
        _read_all(path)


@st.composite
def shard_files(draw) -> dict:
    """Dataset name -> (shape, dtype, fill) for a subset of the six keys plus strays."""
    keys = draw(st.lists(st.sampled_from(list(KEYS) + ["extra"]), unique=True, min_size=3))
    rows, cols = draw(DIMS), draw(DIMS)
    spec = {}
    for key in keys:
        shape = draw(
            st.sampled_from([(rows, cols), (rows,), (rows, 1), (), (rows, cols, 2), (cols, rows)])
        )
        spec[key] = (shape, draw(DTYPES), draw(st.integers(-(2**40), 2**40)))
    attrs = draw(st.sampled_from([None, 100, -1, 2**70, "abc", 1.5]))
    return {"datasets": spec, "vocab_size": attrs}


@FUZZ
@given(spec=shard_files())
def test_shard_structures(spec):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "s.hdf5"
        with h5py.File(path, "w") as f:
            for key, (shape, dtype, fill) in spec["datasets"].items():
                small = int(np.prod(shape, dtype=object)) <= 4096
                if small:  # written: values are the reader's problem
                    value = np.full(shape, fill % 256 if dtype in ("u1", "S4") else fill)
                    try:
                        f.create_dataset(key, data=value.astype(dtype))
                    except (OverflowError, ValueError):
                        f.create_dataset(key, data=np.zeros(shape, dtype=dtype))
                else:  # declared only: the header claims what the file cannot hold
                    chunks = tuple(1 for _ in shape) or None
                    f.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks)
            if spec["vocab_size"] is not None:
                try:
                    f.attrs["vocab_size"] = spec["vocab_size"]
                except (TypeError, OverflowError):  # not storable in HDF5: no attribute then
                    pass
        _read_all(path)
