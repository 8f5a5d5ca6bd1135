"""HDF5 shards in NVIDIA DeepLearningExamples' (DLE) BERT format: write, read, validate.

One shard holds N examples as six gzip-compressed datasets, exactly as DLE's
`create_pretraining_data.py` writes them and its `run_pretraining.py` reads them:

| dataset                | dtype | shape           | meaning                                      |
|------------------------|-------|-----------------|----------------------------------------------|
| `input_ids`            | i4    | (N, max_seq)    | [CLS] A [SEP] B [SEP], masked, 0-padded      |
| `input_mask`           | i1    | (N, max_seq)    | 1 for real tokens                            |
| `segment_ids`          | i1    | (N, max_seq)    | 0 for A (with [CLS], first [SEP]), 1 for B   |
| `masked_lm_positions`  | i4    | (N, max_pred)   | predicted positions, ascending, 0-padded     |
| `masked_lm_ids`        | i4    | (N, max_pred)   | original ids at those positions, 0-padded    |
| `next_sentence_labels` | i1    | (N,)            | 1 = B is a random sentence                   |

Our shards also carry the attribute `vocab_size` (the tokenizer's size at preprocessing), so a
mismatched model is refused at start from the header alone; DLE's shards lack it and are
checked by value (`check_values`) when each shard is opened.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bertcli.atomic import durable_replace
from bertcli.errors import UserError, check_space, os_error, writing

KEYS = (
    "input_ids",
    "input_mask",
    "segment_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "next_sentence_labels",
)
HDF5_SLACK = 64 << 10  # beyond the raw block: superblock, B-tree nodes, attributes
DTYPES = {
    "input_ids": np.int32,
    "input_mask": np.int8,
    "segment_ids": np.int8,
    "masked_lm_positions": np.int32,
    "masked_lm_ids": np.int32,
    "next_sentence_labels": np.int8,
}


@dataclass
class ShardArrays:
    """The six arrays of one shard, in memory."""

    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    next_sentence_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def max_seq_length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def max_predictions_per_seq(self) -> int:
        return self.masked_lm_positions.shape[1]


def write_shard(
    path: str | Path,
    arrays: ShardArrays,
    compression: str | None = "gzip",
    attrs: dict[str, int] | None = None,
) -> None:
    """Write one shard atomically (a temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(attrs or {})
        for key in KEYS:
            f.create_dataset(
                key,
                data=np.asarray(getattr(arrays, key), dtype=DTYPES[key]),
                compression=compression,
            )
    durable_replace(tmp, path)


class _KeepFirstError:
    """The file h5py writes through (its fileobj driver), keeping the first OSError instead of
    raising it.

    libhdf5 cannot recover from a failed write: on a full disk it prints "Exception ignored"
    tracebacks and then crashes (SIGSEGV) when the file is closed. Behind this, HDF5 never sees
    the failure; the unusable file is deleted and the kept error reported after the close.
    """

    def __init__(self, path: Path):
        self.handle = open(path, "w+b")  # buffered: a write is whole or raises
        self.error: OSError | None = None

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.error is None:
            try:
                self.handle.write(data)
                return size
            except OSError as exc:
                self.error = exc
        self.handle.seek(size, 1)  # keep the offsets HDF5 expects
        return size

    def read(self, size: int = -1) -> bytes:
        return self.handle.read(size)

    def readinto(self, buffer) -> int:
        return self.handle.readinto(buffer)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.handle.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return size or 0

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as exc:
            self.error = self.error or exc

    def close(self) -> None:
        self.flush()
        try:
            self.handle.close()
        except OSError as exc:
            self.error = self.error or exc


CHUNK_ROWS_2D = 1024  # rows per HDF5 chunk of the (N, length) datasets
CHUNK_ROWS_1D = 65536  # ... and of next_sentence_labels
GZIP_LEVEL = 1


def encode_chunk(chunk: np.ndarray) -> bytes:
    """One full chunk as HDF5 stores it through the byte-shuffle then deflate filters.

    HDF5's shuffle filter writes byte 0 of every element, then byte 1, ... (a transpose of the
    (elements, itemsize) bytes); its deflate filter is zlib's `compress2`, a zlib stream. Both
    run here, in threads (zlib releases the GIL), so the process writing shards only copies
    finished chunks into the file: with many preprocess workers it would otherwise spend its
    time compressing while the workers wait."""
    data = np.ascontiguousarray(chunk)
    if data.itemsize > 1:
        raw = data.view(np.uint8).reshape(-1, data.itemsize).T.tobytes()
    else:
        raw = data.tobytes()  # shuffling one-byte elements changes nothing
    return zlib.compress(raw, GZIP_LEVEL)


class ShardAppender:
    """Writes one shard incrementally (resizable datasets), so memory holds one block, not a
    shard; the file appears under its final name only on `close()`.

    Compressed shards are written chunk by chunk: rows collect until they fill a chunk, chunks
    are shuffled and deflated by `threads` threads (`encode_chunk`) and written raw with
    `write_direct_chunk`; the last, partial chunk is zero-filled (HDF5's fill value) on `close()`.
    Any HDF5 reader decodes them with its standard filters.

    A full disk is one UserError naming the shard and the space needed: checked before each
    block (uncompressed size, an upper bound), and caught in the write itself."""

    def __init__(
        self,
        path: str | Path,
        compression: str | None = "gzip",
        attrs: dict[str, int] | None = None,
        threads: int = 1,
    ):
        if compression not in ("gzip", None):
            raise ValueError(f"compression must be 'gzip' or None, got {compression!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.compression = compression
        self.attrs = dict(attrs or {})
        self.file: h5py.File | None = None
        self.sink: _KeepFirstError | None = None
        self.rows = 0
        self.bytes = 0  # uncompressed: what the shard needs at most
        self.pending: dict[str, np.ndarray] = {}  # rows past the last full chunk, per key
        self.written: dict[str, int] = {}  # rows written as full chunks, per key
        self.threads = max(1, threads)  # preprocess passes --workers: N workers, N cores
        self.encoders: ThreadPoolExecutor | None = None

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(arrays["input_ids"])
        block = sum(np.asarray(arrays[key]).size * np.dtype(DTYPES[key]).itemsize for key in KEYS)
        check_space(self.path, block + HDF5_SLACK, f"a block of {n:,} examples")
        self.bytes += block
        if self.file is None:
            self._create(arrays)
        self.rows += n
        if self.compression is None:
            for key in KEYS:
                dataset = self.file[key]
                dataset.resize(self.rows, axis=0)
                dataset[self.rows - n :] = np.asarray(arrays[key], dtype=DTYPES[key])
            return
        for key in KEYS:
            rows = np.concatenate([self.pending[key], np.asarray(arrays[key], dtype=DTYPES[key])])
            size = self.file[key].chunks[0]
            full = len(rows) - len(rows) % size
            self._write_chunks(key, [rows[i : i + size] for i in range(0, full, size)])
            self.pending[key] = rows[full:]

    def _create(self, arrays: dict[str, np.ndarray]) -> None:
        with writing(self.tmp):
            self.sink = _KeepFirstError(self.tmp)
        self.file = h5py.File(self.sink, "w")
        self.file.attrs.update(self.attrs)
        for key in KEYS:
            columns = np.asarray(arrays[key]).shape[1:]
            self.file.create_dataset(
                key,
                shape=(0, *columns),
                dtype=DTYPES[key],
                maxshape=(None, *columns),
                chunks=(CHUNK_ROWS_2D if columns else CHUNK_ROWS_1D, *columns),
                compression=self.compression,
                # byte shuffle + gzip level 1: 11% smaller and ~40% less CPU than gzip's
                # default level 4 on token ids; standard HDF5 filters, every reader has them
                compression_opts=GZIP_LEVEL if self.compression else None,
                shuffle=self.compression is not None,
            )
            self.pending[key] = np.zeros((0, *columns), dtype=DTYPES[key])
            self.written[key] = 0

    def _write_chunks(self, key: str, chunks: list[np.ndarray]) -> None:
        """Encode `chunks` (full chunk shape) in threads, write them in order after the last."""
        if not chunks:
            return
        if self.threads == 1:
            encoded = [encode_chunk(chunk) for chunk in chunks]
        else:
            if self.encoders is None:
                self.encoders = ThreadPoolExecutor(self.threads, "bertcli-shard")
            encoded = list(self.encoders.map(encode_chunk, chunks))
        dataset = self.file[key]
        start = self.written[key]
        dataset.resize(
            max(dataset.shape[0], min(self.rows, start + len(chunks) * len(chunks[0]))), axis=0
        )
        zeros = (0,) * (dataset.ndim - 1)
        for k, data in enumerate(encoded):
            dataset.id.write_direct_chunk((start + k * len(chunks[0]), *zeros), data)
        self.written[key] = start + len(chunks) * len(chunks[0])

    def _flush_pending(self) -> None:
        """Write each key's partial last chunk, zero-filled to the chunk shape."""
        for key in KEYS:
            rows = self.pending[key]
            self.file[key].resize(self.rows, axis=0)
            if len(rows):
                chunk = np.zeros(self.file[key].chunks, dtype=DTYPES[key])
                chunk[: len(rows)] = rows
                self._write_chunks(key, [chunk])
            self.pending[key] = rows[:0]

    def close(self) -> None:
        if self.file is not None:
            if self.compression is not None:
                self._flush_pending()
            self._close_file()
            with writing(self.path):
                durable_replace(self.tmp, self.path)

    def _close_file(self) -> None:
        assert self.file is not None and self.sink is not None
        if self.encoders is not None:
            self.encoders.shutdown()
            self.encoders = None
        self.file.close()
        self.sink.close()
        self.file = None
        if self.sink.error is not None:
            self.tmp.unlink(missing_ok=True)
            raise os_error(self.sink.error, self.path, self.bytes, "the shard") or self.sink.error

    def abort(self) -> None:
        try:
            if self.file is not None:
                self._close_file()
        except UserError:
            pass  # the error that made us abort is the one to report
        finally:
            self.tmp.unlink(missing_ok=True)


def validate_shard(f: h5py.File, name: str) -> tuple[int, int, int]:
    """Check keys, dtypes (integer) and shapes; returns (N, max_seq, max_pred)."""
    missing = [k for k in KEYS if k not in f]
    if missing:
        raise UserError(f"{name}: not a BERT pretraining shard, missing {', '.join(missing)}")
    for key in KEYS:
        if not np.issubdtype(f[key].dtype, np.integer):
            raise UserError(f"{name}: {key} has dtype {f[key].dtype}, expected integers")
    n, seq = _shape2(f, "input_ids", name)
    for key in ("input_mask", "segment_ids"):
        if f[key].shape != (n, seq):
            raise UserError(f"{name}: {key} has shape {f[key].shape}, expected {(n, seq)}")
    _, pred = _shape2(f, "masked_lm_positions", name)
    if f["masked_lm_ids"].shape != (n, pred) or f["masked_lm_positions"].shape[0] != n:
        raise UserError(
            f"{name}: masked_lm_positions/masked_lm_ids shapes {f['masked_lm_positions'].shape} "
            f"and {f['masked_lm_ids'].shape} do not match {n} examples"
        )
    if f["next_sentence_labels"].shape not in ((n,), (n, 1)):
        raise UserError(
            f"{name}: next_sentence_labels has shape {f['next_sentence_labels'].shape}, "
            f"expected {(n,)}"
        )
    _check_declared_size(f, name, seq, pred)
    return n, seq, pred


# No HDF5 filter packs data tighter than deflate's limit of about 1032:1, so a header declaring
# more than that many times the file's size is false: refuse it before anything is allocated.
MAX_COMPRESSION = 1032
MAX_SEQ_LENGTH = 1 << 16  # far above any BERT's position table


def _check_declared_size(f: h5py.File, name: str, seq: int, pred: int) -> None:
    if seq > MAX_SEQ_LENGTH:
        raise UserError(f"{name}: input_ids declares sequences of {seq:,} tokens; not a BERT shard")
    if pred > seq:
        raise UserError(f"{name}: {pred:,} masked positions per sequence of {seq:,} tokens")
    declared = sum(int(np.prod(f[key].shape, dtype=object)) * f[key].dtype.itemsize for key in KEYS)
    size = f.id.get_filesize()
    if declared > MAX_COMPRESSION * size + HDF5_SLACK:
        raise UserError(
            f"{name}: its header declares {declared:,} bytes of data, more than a "
            f"{size:,}-byte file can hold; the shard is damaged or crafted"
        )


def _shape2(f: h5py.File, key: str, name: str) -> tuple[int, int]:
    shape = f[key].shape
    if len(shape) != 2:
        raise UserError(f"{name}: {key} has shape {shape}, expected (examples, length)")
    return int(shape[0]), int(shape[1])


def open_shard(path: str | Path) -> h5py.File:
    """Open for reading with a one-line error for anything that is not HDF5."""
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable HDF5 shard ({exc})") from None


@contextmanager
def _damaged(path: str | Path) -> Iterator[None]:
    """A file that opens as HDF5 but whose B-trees, heaps or chunks are damaged makes h5py
    raise RuntimeError, OSError, KeyError, ValueError or TypeError: one line naming the file."""
    try:
        yield
    except UserError:
        raise
    except (RuntimeError, OSError, KeyError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: damaged HDF5 shard ({reason})") from None


def shard_length(path: str | Path) -> tuple[int, int, int]:
    """(N, max_seq, max_pred) of a shard, validated, without reading its data."""
    with open_shard(path) as f, _damaged(path):
        return validate_shard(f, str(path))


def read_shard(path: str | Path, vocab_size: int | None = None) -> ShardArrays:
    """The whole shard in memory, its shapes and value ranges checked, as DLE's loader reads it.

    With `vocab_size`, ids must also fit the model's embedding table.
    """
    with open_shard(path) as f, _damaged(path):
        validate_shard(f, str(path))
        data = {k: np.asarray(f[k][...]) for k in KEYS}
        made_with = header_vocab_size(f)
    data["next_sentence_labels"] = data["next_sentence_labels"].reshape(-1)
    arrays = ShardArrays(**data)
    check_values(arrays, str(path), vocab_size, made_with)
    return arrays


def header_vocab_size(f: h5py.File) -> int | None:
    """The vocabulary size recorded at preprocessing, or None (DLE's shards record none)."""
    value = f.attrs.get("vocab_size")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def check_header(path: str | Path, vocab_size: int) -> None:
    """Refuse, from the header alone, a shard preprocessed with a larger vocabulary."""
    with open_shard(path) as f, _damaged(path):
        made_with = header_vocab_size(f)
    if made_with is not None and made_with > vocab_size:
        raise UserError(
            f"{path}: preprocessed with a {made_with:,}-token vocabulary; this model has "
            f"{vocab_size:,}. Train with the tokenizer the shards were made with "
            "(--tokenizer) or preprocess again with this one"
        )


def check_values(
    arrays: ShardArrays, name: str, vocab_size: int | None = None, made_with: int | None = None
) -> None:
    """Min/max of every dataset against what BERT can consume; one line naming the first fault.

    `made_with` (the header's vocabulary size, if any) only sharpens the message.
    """
    seq = arrays.max_seq_length

    def fail(key: str, bad: np.ndarray, rule: str, cause: str) -> None:
        where = np.argwhere(bad)[0]
        value = getattr(arrays, key)[tuple(where)]
        raise UserError(
            f"{name}: {key} holds {int(value):,} (example {int(where[0])}), but {rule}; {cause}"
        )

    corrupt = "the shard is damaged or was not written by a BERT preprocessor"
    for key in ("input_ids", "masked_lm_ids"):
        data = getattr(arrays, key)
        if data.size and data.min() < 0:
            fail(key, data < 0, "token ids cannot be negative", corrupt)
        if vocab_size is not None and data.size and data.max() >= vocab_size:
            cause = (
                f"preprocessed with a {made_with:,}-token vocabulary; this model has {vocab_size:,}"
                if made_with is not None
                else "likely preprocessed with a larger vocabulary than this model's "
                f"{vocab_size:,} tokens"
            )
            fail(key, data >= vocab_size, f"ids must be below {vocab_size:,}", cause)
    positions = arrays.masked_lm_positions
    if positions.size and positions.min() < 0:
        fail("masked_lm_positions", positions < 0, "positions cannot be negative", corrupt)
    if positions.size and positions.max() >= seq:
        fail(
            "masked_lm_positions",
            positions >= seq,
            f"positions must be below the sequence length {seq}",
            corrupt,
        )
    binary = {
        "segment_ids": "BERT has two segments, 0 (sentence A) and 1 (sentence B)",
        "input_mask": "the attention mask is 0 (padding) or 1 (token)",
        "next_sentence_labels": "the NSP label is 0 (B follows A) or 1 (B is random)",
    }
    for key, rule in binary.items():
        data = getattr(arrays, key)
        if data.size and (data.min() < 0 or data.max() > 1):
            fail(key, (data < 0) | (data > 1), rule, corrupt)


def find_shards(directory: str | Path, flag: str = "--data") -> list[Path]:
    """`*.hdf5` files of a shard directory, or of its single DLE-named sub-directory."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise UserError(f"{flag}: no such directory {directory}")
    files = sorted(p for p in directory.glob("*.hdf5") if p.is_file())
    if not files:
        subdirs = [d for d in directory.iterdir() if d.is_dir() and list(d.glob("*.hdf5"))]
        if len(subdirs) == 1:
            files = sorted(subdirs[0].glob("*.hdf5"))
    if not files:
        raise UserError(f"{flag}: {directory} holds no *.hdf5 shards")
    return files


def labels_from_positions(positions: np.ndarray, ids: np.ndarray, seq_len: int) -> np.ndarray:
    """DLE's rule: (max_seq,) labels, -100 except at the nonzero positions (0 is [CLS])."""
    labels = np.full(seq_len, -100, dtype=np.int64)
    count = int(np.count_nonzero(positions))
    labels[positions[:count]] = ids[:count]
    return labels
