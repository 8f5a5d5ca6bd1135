"""The two datasets pretrain and evaluate read, yielding one and the same example dict:

`input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_labels` (-100 where nothing is
predicted) and `next_sentence_labels` (1 = B is random), each a numpy int64 array.

Both are map-style with an explicit per-epoch `order(epoch)`; the trainer deals the order out to
DDP ranks (`order[rank::world]`) and can skip to any position, which is what exact resume needs.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from bertcli.console import Reporter
from bertcli.data.corpus import CorpusStats, check_input_files, read_documents
from bertcli.data.examples import (
    Corpus,
    MaskingSpec,
    assemble,
    continuation_mask,
    document_pairs,
    mask_sequence,
)
from bertcli.data.shards import find_shards, labels_from_positions, read_shard, shard_length
from bertcli.errors import UserError
from bertcli.tokenizer import BertTokenizer

Example = dict[str, np.ndarray]


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch of int64 tensors."""
    return {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}


class PreprocessedDataset(torch.utils.data.Dataset):
    """DLE-format HDF5 shards (ours or DLE's), opened lazily, one shard cached at a time."""

    def __init__(self, directory: str | Path, seed: int = 12345, flag: str = "--train-data"):
        self.files = find_shards(directory, flag)
        sizes = []
        shapes = set()
        for path in self.files:
            n, seq, pred = shard_length(path)
            sizes.append(n)
            shapes.add(seq)
        if len(shapes) != 1:
            raise UserError(f"{flag}: shards in {directory} mix sequence lengths {sorted(shapes)}")
        self.max_seq_length = shapes.pop()
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.seed = seed
        self._cache: OrderedDict[int, object] = OrderedDict()
        if self.starts[-1] == 0:
            raise UserError(f"{flag}: the shards in {directory} hold no examples")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, index: int):
        if index not in self._cache:
            self._cache[index] = read_shard(self.files[index])
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[index]

    def __getitem__(self, i: int) -> Example:
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        shard = self._shard(s)
        j = i - int(self.starts[s])
        seq = shard.max_seq_length
        return {
            "input_ids": shard.input_ids[j].astype(np.int64),
            "token_type_ids": shard.segment_ids[j].astype(np.int64),
            "attention_mask": shard.input_mask[j].astype(np.int64),
            "masked_lm_labels": labels_from_positions(
                shard.masked_lm_positions[j], shard.masked_lm_ids[j], seq
            ),
            "next_sentence_labels": np.asarray(shard.next_sentence_labels[j], dtype=np.int64),
        }

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """Shards in a random order, examples shuffled within each: few shard loads per epoch."""
        if not shuffle:
            return np.arange(len(self))
        gen = np.random.default_rng([self.seed, epoch])
        parts = [
            self.starts[s] + gen.permutation(int(self.sizes[s]))
            for s in gen.permutation(len(self.files))
        ]
        return np.concatenate(parts)


def corpus_cache_key(files: list[Path], tokenizer: BertTokenizer, input_format: str) -> str:
    """sha256 over the tokenizer's JSON, the format and every file's content."""
    digest = hashlib.sha256()
    digest.update(tokenizer.tokenizer.to_str().encode())
    digest.update(input_format.encode())
    for path in files:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:24]


def tokenize_corpus(
    files: list[Path],
    tokenizer: BertTokenizer,
    input_format: str = "auto",
    reporter: Reporter | None = None,
) -> tuple[Corpus, CorpusStats]:
    """Read and tokenize every document (batched through the Rust tokenizer)."""
    stats = CorpusStats()
    reporter = reporter or Reporter()
    reporter.start("Tokenizing", total=sum(p.stat().st_size for p in files), unit="bytes")
    seen = 0
    documents: list[list[list[int]]] = []
    batch: list[list[str]] = []

    def flush() -> None:
        sentences = [s for doc in batch for s in doc]
        ids = tokenizer.encode_batch(sentences)
        k = 0
        for doc in batch:
            documents.append(ids[k : k + len(doc)])
            k += len(doc)
        batch.clear()
        nonlocal seen
        reporter.advance(stats.bytes - seen)
        seen = stats.bytes

    for doc in read_documents(files, input_format, stats):
        batch.append(doc)
        if len(batch) >= 256:
            flush()
    if batch:
        flush()
    reporter.finish()
    return Corpus.from_documents(documents), stats


class TextDataset(torch.utils.data.Dataset):
    """Raw text, tokenized once (cached), with NSP pairs and masks made fresh every epoch.

    An example depends only on (seed, epoch, index): a resumed run sees exactly the batches an
    uninterrupted one would, whichever rank reads it.
    """

    def __init__(
        self,
        files: list[str | Path],
        tokenizer: BertTokenizer,
        max_seq_length: int = 128,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        short_seq_prob: float = 0.1,
        whole_word_masking: bool = False,
        seed: int = 12345,
        input_format: str = "auto",
        cache_dir: str | Path | None = None,
        flag: str = "--train-data",
        reporter: Reporter | None = None,
    ):
        paths = check_input_files(files, flag)
        self.max_seq_length = max_seq_length
        self.short_seq_prob = short_seq_prob
        self.seed = seed
        self.spec = MaskingSpec(
            vocab_size=tokenizer.vocab_size,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            pad_id=tokenizer.pad_id,
            mask_id=tokenizer.mask_id,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_masking=whole_word_masking,
            continuation=continuation_mask(tokenizer) if whole_word_masking else None,
        )
        # the reporter is used while loading only: it must not travel to DataLoader workers
        self.corpus = self._load(paths, tokenizer, input_format, cache_dir, reporter)
        if self.corpus.num_documents == 0 or len(self.corpus.tokens) < 2:
            raise UserError(f"{flag}: the corpus has no text to train on")
        self.epoch = -1
        self.pairs = np.zeros((0, 5), dtype=np.int64)
        self.set_epoch(0)
        if len(self.pairs) == 0:
            raise UserError(f"{flag}: the corpus is too short to make any example")

    def _load(self, paths, tokenizer, input_format, cache_dir, reporter=None) -> Corpus:
        if cache_dir is None:
            return tokenize_corpus(paths, tokenizer, input_format, reporter)[0]
        cache = Path(cache_dir) / f"tokens-{corpus_cache_key(paths, tokenizer, input_format)}.npz"
        if cache.is_file():
            try:
                with np.load(cache) as data:
                    return Corpus(data["tokens"], data["sent_start"], data["doc_start"])
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt
        corpus = tokenize_corpus(paths, tokenizer, input_format, reporter)[0]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp, tokens=corpus.tokens, sent_start=corpus.sent_start, doc_start=corpus.doc_start
        )
        os.replace(tmp, cache)
        return corpus

    def set_epoch(self, epoch: int) -> None:
        """Pair sentences for this epoch (BERT's algorithm over the whole corpus)."""
        if epoch == self.epoch:
            return
        rng = random.Random(f"{self.seed}:pairs:{epoch}")
        pairs = []
        for d in range(self.corpus.num_documents):
            pairs.extend(
                document_pairs(self.corpus, d, self.max_seq_length, self.short_seq_prob, rng)
            )
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 5)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Example:
        pair = tuple(int(x) for x in self.pairs[i])
        ids, segments, length = assemble(self.corpus.tokens, pair, self.max_seq_length, self.spec)
        gen = np.random.default_rng([self.seed, self.epoch, i])
        ids, positions, labels = mask_sequence(ids, length, self.spec, gen)
        mlm_labels = np.full(self.max_seq_length, -100, dtype=np.int64)
        mlm_labels[positions] = labels
        mask = np.zeros(self.max_seq_length, dtype=np.int64)
        mask[:length] = 1
        return {
            "input_ids": ids.astype(np.int64),
            "token_type_ids": segments.astype(np.int64),
            "attention_mask": mask,
            "masked_lm_labels": mlm_labels,
            "next_sentence_labels": np.asarray(pair[4], dtype=np.int64),
        }

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """A permutation of this epoch's examples (call `set_epoch(epoch)` first)."""
        self.set_epoch(epoch)
        if not shuffle:
            return np.arange(len(self))
        return np.random.default_rng([self.seed, epoch, 7]).permutation(len(self))
