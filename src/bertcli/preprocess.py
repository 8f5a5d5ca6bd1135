"""Raw text -> masked-LM + next-sentence examples -> DLE-format HDF5 shards.

The corpus streams through in *blocks* of documents. Each block is tokenized in one
`encode_batch` call (tokenizers' Rust core), turned into examples with an RNG seeded by
(seed, block), and shuffled; blocks run in `--workers` processes with a bounded window, and are
written in block order. So the output is identical whatever the worker count, and peak memory
depends on the block size and worker count, not on the corpus size.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertcli.atomic import atomic_directory
from bertcli.config import PreprocessConfig
from bertcli.console import Reporter
from bertcli.data.corpus import CorpusStats, check_input_files, read_documents
from bertcli.data.examples import (
    Corpus,
    MaskingSpec,
    assemble,
    document_pairs,
    is_short_document,
    mask_sequence,
    packed_example,
    packed_windows,
    stream_starts,
)
from bertcli.data.shards import ShardAppender
from bertcli.errors import UserError, writing
from bertcli.tokenizer import BertTokenizer

BLOCK_DOCUMENTS = 256
BLOCK_CHARS = 1 << 20


@dataclass
class PreprocessResult:
    """What was written, for the report and `preprocess.json`."""

    directory: str
    train_shards: int = 0
    eval_shards: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    documents: int = 0
    skipped_documents: int = 0
    long_sentences: int = 0  # longer than max_seq_length - 3: truncated, as google's code does
    long_sentence_tokens_dropped: int = 0  # at least this many of their tokens (per pass)
    sentences: int = 0
    tokens: int = 0
    invalid_utf8_lines: int = 0
    bad_json_lines: int = 0
    random_next_fraction: float = 0.0
    split_documents: int = 0  # longer than corpus.MAX_DOCUMENT_CHARS: cut into several


# ---- one block, in a worker ------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(
    tokenizer_json: str, spec: MaskingSpec, config: PreprocessConfig, parent: int
) -> None:
    from tokenizers import Tokenizer

    _exit_with_parent(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=Tokenizer.from_str(tokenizer_json), spec=spec, config=config)


_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Kill this pool worker when `parent` dies, so `kill -9` of preprocess leaves no orphans.

    A worker holds nothing worth saving, hence SIGKILL. Linux delivers it itself (prctl
    PR_SET_PDEATHSIG); a daemon thread watching the parent PID covers other systems and a parent
    that died before prctl took effect."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the watcher below still works

    # our parent: the main process, or multiprocessing's fork server, which exits with it
    watched = os.getppid()
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        os._exit(1)  # the main process died before prctl took effect

    def watch() -> None:
        while os.getppid() == watched:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="bertcli-parent-watch", daemon=True).start()


def _process_block(args: tuple[str, int, list[list[str]]]) -> tuple:
    namespace, block, documents = args
    return make_block_examples(
        _WORKER["tokenizer"], documents, _WORKER["spec"], _WORKER["config"], namespace, block
    )


def make_block_examples(
    tokenizer,
    documents: list[list[str]],
    spec: MaskingSpec,
    config: PreprocessConfig,
    namespace: str,
    block: int,
) -> tuple[dict, int, int, int, tuple[int, int]]:
    """Tokenize a block and build its examples: (arrays, skipped docs, tokens, random-next,
    (sentences longer than a segment, their tokens that no example can hold))."""
    sentences = [s for doc in documents for s in doc]
    encoded = tokenizer.encode_batch(sentences, add_special_tokens=False)
    tokenized: list[list[list[int]]] = []
    k = 0
    skipped = 0
    for doc in documents:
        ids = [encoded[k + j].ids for j in range(len(doc))]
        k += len(doc)
        if is_short_document(ids):  # the one rule, shared with pretrain --data-text
            skipped += 1
            continue
        tokenized.append(ids)
    # one rng per block, drawn in google-research/bert's create_training_instances order:
    # shuffle the documents, make and mask each instance, shuffle the instances
    rng = random.Random(f"{config.seed}:{namespace}:{block}")
    if not config.nsp:
        corpus = Corpus.from_documents(tokenized)
        arrays = _packed_arrays(corpus, config, spec, rng)
        return arrays, skipped, len(corpus.tokens), 0, (0, 0)  # packing cuts no sentence
    rng.shuffle(tokenized)
    corpus = Corpus.from_documents(tokenized)
    instances: list[tuple] = []

    def mask(pair) -> None:
        ids, segments, length = assemble(corpus.tokens, pair, config.max_seq_length, spec)
        instances.append((mask_sequence(ids, length, spec, rng), segments, length, pair[4]))

    for _ in range(config.dupe_factor):
        for d in range(corpus.num_documents):
            document_pairs(
                corpus, d, config.max_seq_length, config.short_seq_prob, rng, on_pair=mask
            )
    rng.shuffle(instances)
    arrays = _empty_arrays(len(instances), config)
    for row, instance in enumerate(instances):
        _fill_row(arrays, row, *instance)
    random_next = int(arrays["next_sentence_labels"].sum())
    # google's algorithm truncates a sentence longer than a segment (pretrain --data-text splits
    # it instead); shards stay reference-exact, and what truncation must drop is counted
    lengths = np.diff(corpus.sent_start)
    over = lengths[lengths > config.max_seq_length - 3] - (config.max_seq_length - 3)
    return arrays, skipped, len(corpus.tokens), random_next, (len(over), int(over.sum()))


def _packed_arrays(corpus: Corpus, config: PreprocessConfig, spec: MaskingSpec, rng):
    """MLM-only: the block's documents packed into full windows (see `examples.py`), each
    `dupe_factor` times with different masks, shuffled; the block's last window may be short."""
    stream, seq = stream_starts(corpus), config.max_seq_length
    windows = [w for _ in range(config.dupe_factor) for w in range(packed_windows(stream, seq))]
    rng.shuffle(windows)
    out = _empty_arrays(len(windows), config)
    for row, window in enumerate(windows):
        ids, _, length = packed_example(corpus.tokens, 0, stream, window, seq, spec)
        masked = mask_sequence(ids, length, spec, rng)
        _fill_row(out, row, masked, np.zeros_like(ids, dtype=np.int8), length, 0)
    return out


def _empty_arrays(n: int, config: PreprocessConfig) -> dict:
    seq, pred = config.max_seq_length, config.max_predictions_per_seq
    return {
        "input_ids": np.zeros((n, seq), dtype=np.int32),
        "input_mask": np.zeros((n, seq), dtype=np.int8),
        "segment_ids": np.zeros((n, seq), dtype=np.int8),
        "masked_lm_positions": np.zeros((n, pred), dtype=np.int32),
        "masked_lm_ids": np.zeros((n, pred), dtype=np.int32),
        "next_sentence_labels": np.zeros(n, dtype=np.int8),
    }


def _fill_row(out: dict, row: int, masked: tuple, segments, length: int, label: int) -> None:
    ids, positions, labels = masked
    out["input_ids"][row] = ids
    out["input_mask"][row, :length] = 1
    out["segment_ids"][row] = segments
    out["masked_lm_positions"][row, : len(positions)] = positions
    out["masked_lm_ids"][row, : len(labels)] = labels
    out["next_sentence_labels"][row] = label


# ---- the driver ------------------------------------------------------------------------------


def _blocks(
    documents: Iterator[list[str]], eval_fraction: float, seed: int
) -> Iterator[tuple[str, int, list[list[str]]]]:
    """Group documents into (namespace, index, documents) blocks; eval docs drawn by seed."""
    chooser = random.Random(f"{seed}:eval-split")
    buffers: dict[str, list[list[str]]] = {"train": [], "eval": []}
    sizes = {"train": 0, "eval": 0}
    counts = {"train": 0, "eval": 0}
    for doc in documents:
        name = "eval" if eval_fraction and chooser.random() < eval_fraction else "train"
        buffers[name].append(doc)
        sizes[name] += sum(len(s) for s in doc)
        if len(buffers[name]) >= BLOCK_DOCUMENTS or sizes[name] >= BLOCK_CHARS:
            yield name, counts[name], buffers[name]
            counts[name] += 1
            buffers[name], sizes[name] = [], 0
    for name in ("train", "eval"):
        if buffers[name]:
            yield name, counts[name], buffers[name]


class _ShardWriter:
    """Appends examples to fixed-size shards in a directory, one open shard at a time."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        shard_size: int,
        attrs: dict | None = None,
        threads: int = 1,
    ):
        self.directory, self.prefix, self.shard_size = directory, prefix, shard_size
        self.threads = threads  # compressing chunks: --workers of them
        self.attrs = attrs  # the shard header: vocab_size, checked against the model at start
        self.current: ShardAppender | None = None
        self.shards = 0
        self.examples = 0

    def add(self, arrays: dict) -> None:
        start, rows = 0, len(arrays["input_ids"])
        while start < rows:
            if self.current is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = f"{self.prefix}_{self.shards:05d}.hdf5"
                self.current = ShardAppender(
                    self.directory / name, attrs=self.attrs, threads=self.threads
                )
            take = min(rows - start, self.shard_size - self.current.rows)
            self.current.append({k: v[start : start + take] for k, v in arrays.items()})
            self.examples += take
            start += take
            if self.current.rows >= self.shard_size:
                self.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.shards += 1
            self.current = None

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()


def preprocess(
    config: PreprocessConfig, tokenizer: BertTokenizer, reporter: Reporter | None = None
) -> PreprocessResult:
    """Write DLE-format shards for `config.inputs` under `config.out/<DLE-named dir>/`."""
    reporter = reporter or Reporter()
    files = check_input_files(config.inputs, "--input")
    spec = MaskingSpec.from_tokenizer(  # also checks --masked-lm-prob: before anything is written
        tokenizer,
        config.masked_lm_prob,
        config.max_predictions_per_seq,
        config.whole_word_masking,
    )
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    final = out / config.subdir_name(tokenizer.lowercase)
    refuse_foreign_directory(final)
    with writing(final, what="the shards"), atomic_directory(final) as tmp:
        result = _run(config, tokenizer, spec, files, tmp, reporter)
        result.directory = str(final)
        (tmp / "preprocess.json").write_text(
            json.dumps({"config": _jsonable(config), "result": asdict(result)}, indent=2) + "\n"
        )
    return result


def refuse_foreign_directory(final: Path) -> None:
    """UserError unless `final` is absent or holds only what preprocess writes (`*.hdf5`,
    `eval/*.hdf5`, `preprocess.json`): it is replaced whole, so nothing else may be in it."""
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError(f"--out: {final} exists and is not a directory")
    def shards_only(directory: Path, top: bool) -> bool:
        return all(
            (e.name.endswith(".hdf5") and e.is_file() and not e.is_symlink())
            or (top and e.name == "preprocess.json")
            or (top and e.name == "eval" and e.is_dir() and shards_only(e, False))
            for e in directory.iterdir()
        )

    if not shards_only(final, True):
        raise UserError(
            f"--out: {final} exists and holds files bertcli did not write; it would be replaced "
            "whole: move it or choose another --out"
        )


def _jsonable(config: PreprocessConfig) -> dict:
    data = asdict(config)
    data["inputs"] = [str(p) for p in config.inputs]
    data["out"] = str(config.out)
    return data


def _run(config, tokenizer, spec, files, directory: Path, reporter: Reporter) -> PreprocessResult:
    stats = CorpusStats()
    result = PreprocessResult(directory=str(directory))
    header = {"vocab_size": tokenizer.vocab_size}
    writers = {
        "train": _ShardWriter(directory, "training", config.shard_size, header, config.workers),
        "eval": _ShardWriter(directory / "eval", "eval", config.shard_size, header, config.workers),
    }
    total_bytes = sum(f.stat().st_size for f in files)
    reporter.start("Preprocessing", total=total_bytes, unit="bytes")
    seen_bytes = 0
    random_next = 0

    def collect(namespace: str, outcome: tuple) -> None:
        nonlocal seen_bytes, random_next
        arrays, skipped, tokens, rnd, (long_sentences, cut) = outcome
        result.long_sentences += long_sentences
        result.long_sentence_tokens_dropped += cut
        writers[namespace].add(arrays)
        result.skipped_documents += skipped
        result.tokens += tokens
        random_next += rnd
        reporter.advance(stats.bytes - seen_bytes, docs=stats.documents)
        seen_bytes = stats.bytes

    blocks = _blocks(
        read_documents(files, config.input_format, stats), config.eval_fraction, config.seed
    )
    try:
        _produce(config, tokenizer, spec, blocks, collect)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    reporter.finish()
    _finish(result, stats, writers, random_next)
    return result


@contextlib.contextmanager
def _tokenizer_threads_off() -> Iterator[None]:
    """`--workers N` means N cores: in process, keep tokenizers' Rust thread pool out of
    `encode_batch` too, as the pool workers do (tokenizers reads the variable on every call)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _produce(config, tokenizer, spec, blocks, collect) -> None:
    """Make each block's examples, in process or in a bounded window of worker processes."""
    if config.workers == 1:
        with _tokenizer_threads_off():
            for namespace, index, docs in blocks:
                collect(
                    namespace,
                    make_block_examples(tokenizer.tokenizer, docs, spec, config, namespace, index),
                )
    else:
        init = (tokenizer.tokenizer.to_str(), spec, config, os.getpid())
        with ProcessPoolExecutor(config.workers, initializer=_init_worker, initargs=init) as pool:
            window: deque[tuple[str, Future]] = deque()
            for namespace, index, docs in blocks:
                window.append((namespace, pool.submit(_process_block, (namespace, index, docs))))
                if len(window) >= 2 * config.workers:
                    name, future = window.popleft()
                    collect(name, future.result())
            while window:
                name, future = window.popleft()
                collect(name, future.result())


def _finish(result: PreprocessResult, stats: CorpusStats, writers, random_next: int) -> None:
    result.documents = stats.documents
    result.sentences = stats.sentences
    result.invalid_utf8_lines = stats.invalid_utf8_lines
    result.bad_json_lines = stats.bad_json_lines
    result.split_documents = stats.split_documents
    result.train_shards, result.train_examples = writers["train"].shards, writers["train"].examples
    result.eval_shards, result.eval_examples = writers["eval"].shards, writers["eval"].examples
    total = result.train_examples + result.eval_examples
    result.random_next_fraction = random_next / total if total else 0.0
    if stats.documents == 0:
        raise UserError("--input: the corpus has no documents (no text found)")
    if result.train_examples == 0:
        raise UserError(
            f"--input: no examples could be made ({result.skipped_documents} documents too short "
            "to pair)"
        )
