"""A tokenized corpus on disk: built once by streaming, then memory-mapped by every process.

A store is a directory of `.npy` arrays plus `meta.json`:

* `tokens.npy` (num_tokens,) uint16 (int32 for vocabularies over 65,535): every kept document's
  sentences, back to back;
* `sent_start.npy` (num_sentences + 1,) int64: sentence s is `tokens[sent_start[s]:sent_start[s+1]]`;
* `doc_start.npy` (num_documents + 1,) int64: document d is sentences `doc_start[d]:doc_start[d+1]`;
* `stream_start.npy` (num_documents + 1,) int64: where document d starts in the packed stream
  (its tokens, then one [SEP]) that MLM-only data cuts into windows;
* `block_start.npy` (num_blocks + 1,) int64: documents grouped into blocks of about
  `BLOCK_TOKENS` tokens, the unit in which NSP pairs are made lazily each epoch.

Building reads the corpus once, a batch of documents at a time, and appends each array to its
file, so memory does not grow with the corpus. Everything is written into a temporary directory
that is renamed into place when complete (`atomic_directory`), so a killed build leaves nothing
under the final name. Opening uses `np.load(mmap_mode="r")`: all the processes of a node share
the same page-cache pages, and only the pages an epoch touches are read.

The cache key (`corpus_cache_key`) hashes the tokenizer, the input format, a version, and for
every file its resolved path, size, `mtime_ns` and the sha256 of its first and last 64 KiB.
That is cheap at any corpus size and catches every ordinary change (an edit changes the size or
the mtime; a copy over the file changes the mtime). The residual risk: an edit that keeps the size,
leaves the first and last 64 KiB alone and restores the old mtime (e.g. `touch -d`) is not seen;
delete the store from the cache (`token_cache`: `~/.cache/bertcli/tokens` by default) after
such surgery.
"""

from __future__ import annotations

import errno
import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertcli.atomic import atomic_directory, remove_tree
from bertcli.console import Reporter
from bertcli.data.corpus import CorpusStats, read_documents
from bertcli.data.examples import Corpus, is_short_document
from bertcli.data.token_cache import BuildLock, hold_in_use, release_claim, try_claim_unused
from bertcli.errors import UserError

STORE_VERSION = 1
BLOCK_TOKENS = 1 << 17  # ~1,000 examples of 128 tokens: a block is paired in ~50 ms
BATCH_DOCUMENTS = 256
BATCH_CHARS = 1 << 20
# A longer "sentence" is tokenized in pieces cut at spaces: the Rust tokenizer holds ~100 bytes
# per token of a string at once. Word-level pre-tokenizers give the same ids either way.
PIECE_CHARS = 1 << 16
# Hashed at both ends of every file: small, as a corpus of many 1 MB parts (WikiExtractor's)
# would otherwise be read whole just to compute the key.
_HEAD_TAIL = 1 << 16
_NPY_HEADER = 128  # fixed, so the header can be written before the length is known

ARRAYS = ("tokens", "sent_start", "doc_start", "stream_start", "block_start")


@dataclass
class StoreStats:
    """What building a store read and kept (saved in meta.json)."""

    files: int = 0
    bytes: int = 0
    documents: int = 0
    skipped_documents: int = 0
    sentences: int = 0
    tokens: int = 0
    invalid_utf8_lines: int = 0
    bad_json_lines: int = 0


def corpus_cache_key(files: list[Path], tokenizer, input_format: str) -> str:
    """Cheap, change-detecting key: tokenizer, format, and each file's path, size, mtime_ns and
    the sha256 of its first and last 64 KiB (see the module docstring for the residual risk)."""
    digest = hashlib.sha256()
    digest.update(f"v{STORE_VERSION}:{BLOCK_TOKENS}:{input_format}\0".encode())
    digest.update(tokenizer.tokenizer.to_str().encode())
    for path in files:
        info = path.stat()
        digest.update(f"\0{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        with path.open("rb") as handle:
            digest.update(hashlib.sha256(handle.read(_HEAD_TAIL)).digest())
            if info.st_size > _HEAD_TAIL:
                handle.seek(max(_HEAD_TAIL, info.st_size - _HEAD_TAIL))
                digest.update(hashlib.sha256(handle.read(_HEAD_TAIL)).digest())
    return digest.hexdigest()[:24]


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    text = f"{{'descr': {np.dtype(dtype).str!r}, 'fortran_order': False, 'shape': ({length},), }}"
    body = text.ljust(_NPY_HEADER - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class _ArrayWriter:
    """Appends to a 1-D .npy file whose length is known only at the end."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.length = path, np.dtype(dtype), 0
        self.handle = path.open("wb")
        self.handle.write(_npy_header(self.dtype, 0))

    def append(self, values) -> None:
        array = np.asarray(values, dtype=self.dtype)
        self.handle.write(array.tobytes())
        self.length += len(array)

    def close(self) -> None:
        self.handle.seek(0)
        self.handle.write(_npy_header(self.dtype, self.length))
        self.handle.close()


def _split_at_spaces(text: str) -> list[str]:
    if len(text) <= PIECE_CHARS:
        return [text]
    pieces, start = [], 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind(" ", start + PIECE_CHARS // 2, start + PIECE_CHARS)
        cut = cut if cut > start else start + PIECE_CHARS
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode_documents(tokenizer, documents: list[list[str]]) -> list[list[np.ndarray]]:
    """Token ids of every sentence of every document, in one batched call to the tokenizer."""
    pieces: list[str] = []
    owners: list[int] = []  # flat sentence index of each piece
    count = 0
    for doc in documents:
        for sentence in doc:
            for piece in _split_at_spaces(sentence):
                pieces.append(piece)
                owners.append(count)
            count += 1
    ids = tokenizer.encode_batch(pieces)
    flat: list[list[int]] = [[] for _ in range(count)]
    for owner, piece_ids in zip(owners, ids):
        flat[owner].extend(piece_ids)
    out, k = [], 0
    for doc in documents:
        out.append([np.asarray(s, dtype=np.int64) for s in flat[k : k + len(doc)]])
        k += len(doc)
    return out


def build_store(
    files: list[Path],
    tokenizer,
    input_format: str,
    directory: Path,
    reporter: Reporter | None = None,
) -> StoreStats:
    """Stream-tokenize `files` into a store at `directory` (atomically); returns its stats."""
    reporter = reporter or Reporter()
    stats = CorpusStats()
    result = StoreStats()
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.int32
    total = sum(p.stat().st_size for p in files)
    try:
        with atomic_directory(directory) as tmp:
            writers = {name: _ArrayWriter(tmp / f"{name}.npy", np.int64) for name in ARRAYS}
            writers["tokens"] = _ArrayWriter(tmp / "tokens.npy", dtype)
            for name in ("sent_start", "doc_start", "stream_start", "block_start"):
                writers[name].append([0])
            state = {"block_tokens": 0, "seen": 0}
            reporter.start("Tokenizing", total=total, unit="bytes")

            def flush(batch: list[list[str]]) -> None:
                for doc in encode_documents(tokenizer, batch):
                    sentences = [s for s in doc if len(s)]
                    if is_short_document(sentences):
                        result.skipped_documents += 1
                        continue
                    lengths = np.asarray([len(s) for s in sentences], dtype=np.int64)
                    n = int(lengths.sum())
                    writers["tokens"].append(np.concatenate(sentences))
                    writers["sent_start"].append(result.tokens + np.cumsum(lengths))
                    result.tokens += n
                    result.sentences += len(sentences)
                    result.documents += 1
                    writers["doc_start"].append([result.sentences])
                    writers["stream_start"].append([result.tokens + result.documents])
                    state["block_tokens"] += n
                    if state["block_tokens"] >= BLOCK_TOKENS:
                        writers["block_start"].append([result.documents])
                        state["block_tokens"] = 0
                reporter.advance(stats.bytes - state["seen"], docs=result.documents)
                state["seen"] = stats.bytes

            batch: list[list[str]] = []
            chars = 0
            for doc in read_documents(files, input_format, stats):
                batch.append(doc)
                chars += sum(len(s) for s in doc)
                if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
                    flush(batch)
                    batch, chars = [], 0
            if batch:
                flush(batch)
            if state["block_tokens"]:
                writers["block_start"].append([result.documents])
            reporter.finish()
            for writer in writers.values():
                writer.close()
            result.files, result.bytes = stats.files, stats.bytes
            result.invalid_utf8_lines = stats.invalid_utf8_lines
            result.bad_json_lines = stats.bad_json_lines
            meta = {
                "version": STORE_VERSION,
                "files": [str(p) for p in files],
                "input_format": input_format,
                "source": _source_id(files, tokenizer, input_format),
                "stats": asdict(result),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    except OSError as exc:
        mine = exc.filename is None or str(exc.filename) in str(directory)
        if mine and exc.errno in (
            errno.ENOTDIR,
            errno.EEXIST,
            errno.EACCES,
            errno.EPERM,
            errno.EROFS,
            errno.ENOSPC,
            errno.EDQUOT,
        ):
            raise UserError(
                f"cannot write the token cache in {directory.parent}: {exc.strerror}"
                + (" (needs about 2 bytes per token)" if exc.errno == errno.ENOSPC else "")
            ) from None
        raise
    return result


@dataclass
class TokenStore:
    """An opened store: memory-mapped arrays (read-only) and the build's stats."""

    directory: Path
    tokens: np.ndarray
    sent_start: np.ndarray
    doc_start: np.ndarray
    stream_start: np.ndarray
    block_start: np.ndarray
    stats: StoreStats

    @classmethod
    def open(cls, directory: Path) -> TokenStore:
        """Map a complete store; OSError/ValueError if it is damaged."""
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("version") != STORE_VERSION:
            raise ValueError(f"store version {meta.get('version')}")
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        store = cls(directory, stats=StoreStats(**meta["stats"]), **arrays)
        if (
            len(store.tokens) != store.sent_start[-1]
            or store.doc_start[-1] != len(store.sent_start) - 1
            or len(store.stream_start) != len(store.doc_start)
            or store.block_start[-1] != len(store.doc_start) - 1
        ):
            raise ValueError("inconsistent arrays")
        return store

    @property
    def corpus(self) -> Corpus:
        """The documents as a Corpus over the mapped arrays."""
        return Corpus(self.tokens, self.sent_start, self.doc_start)


def _source_id(files: list[Path], tokenizer, input_format: str) -> str:
    """What a store was built from, minus the files' contents: equal for a changed corpus."""
    digest = hashlib.sha256(tokenizer.tokenizer.to_str().encode())
    digest.update(json.dumps([input_format, [str(p.resolve()) for p in files]]).encode())
    return digest.hexdigest()[:24]


def remove_stale(path: Path, files: list[Path], tokenizer, input_format: str) -> list[Path]:
    """Delete the other stores in `path`'s cache built from the same files (since changed):
    a 20 GB corpus edited once must not leave a 10 GB store behind. A store that another
    running process reads is kept (see `token_cache`); other corpora's stores are never
    touched."""
    source = _source_id(files, tokenizer, input_format)
    removed = []
    for other in sorted(path.parent.glob("tokens-*")):
        if other == path or not other.is_dir():
            continue
        try:
            stale = json.loads((other / "meta.json").read_text()).get("source") == source
        except (OSError, ValueError):
            continue
        if not stale:
            continue
        claim = try_claim_unused(other)
        if claim is None:
            continue  # in use by another run: a later build prunes it
        try:
            remove_tree(other)
        finally:
            release_claim(other, claim)
        removed.append(other)
    return removed


def store_path(files: list[Path], tokenizer, input_format: str, cache_dir: Path) -> Path:
    """Where the store for these files, tokenizer and format lives under `cache_dir`."""
    return Path(cache_dir) / f"tokens-{corpus_cache_key(files, tokenizer, input_format)}"


def open_or_build(
    files: list[Path],
    tokenizer,
    input_format: str,
    path: Path,
    reporter: Reporter | None = None,
) -> TokenStore:
    """The store at `path` (from `store_path`) if complete and intact, else one built there.

    The cache may be shared by concurrent runs: one process builds a key while the others wait
    on its build lock and then open what it built (`token_cache` says how).
    """
    lock = BuildLock(path)
    try:
        lock.__enter__()
    except OSError as exc:
        raise UserError(f"cannot write the token cache in {path.parent}: {exc.strerror}") from None
    try:
        if path.is_dir():
            try:
                store = TokenStore.open(path)
                hold_in_use(path)
                return store
            except (OSError, ValueError, KeyError, TypeError):
                pass  # damaged (or an older version): rebuilt below, replacing it atomically
        build_store(files, tokenizer, input_format, path, reporter)
        hold_in_use(path)
        remove_stale(path, files, tokenizer, input_format)
        return TokenStore.open(path)
    finally:
        lock.__exit__(None, None, None)
