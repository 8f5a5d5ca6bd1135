"""The two datasets pretrain and evaluate read, yielding one and the same example dict:

`input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_labels` (-100 where nothing is
predicted), `masked_lm_positions` (P = max_predictions_per_seq: the predicted positions
ascending, then 0s; position 0 is [CLS], never predicted) and `next_sentence_labels`
(1 = B is random; always 0 for packed MLM-only text), each a numpy int64 array.

Both are map-style with an explicit per-epoch `order(epoch)`; the trainer deals the order out to
DDP ranks (`order[rank::world]`) and can skip to any position, which is what exact resume needs.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from bertcli.console import Reporter
from bertcli.data.corpus import check_input_files
from bertcli.data.examples import (
    MaskingSpec,
    assemble,
    block_pairs,
    mask_sequence,
    packed_example,
    packed_windows,
)
from bertcli.data.shards import (
    check_header,
    find_shards,
    labels_from_positions,
    read_shard,
    shard_length,
)
from bertcli.data.token_cache import hold_in_use
from bertcli.data.token_store import (  # noqa: F401 (corpus_cache_key: public)
    TokenStore,
    corpus_cache_key,
    open_or_build,
    store_path,
)
from bertcli.errors import UserError
from bertcli.tokenizer import BertTokenizer

Example = dict[str, np.ndarray]


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch of int64 tensors."""
    return {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}


class IndexBatches:
    """A DataLoader `batch_sampler` slicing one index array into batches as they are asked for.

    An epoch of a large corpus has hundreds of millions of examples: a list of Python lists of
    them would cost far more memory than the int64 array itself (and time to build each epoch).
    """

    def __init__(self, indices: np.ndarray, batch_size: int, start: int = 0):
        self.indices = indices
        self.batch_size = batch_size
        self.start = start

    def __len__(self) -> int:
        return max(0, -(-(len(self.indices) - self.start) // self.batch_size))

    def __iter__(self):
        for i in range(self.start, len(self.indices), self.batch_size):
            yield self.indices[i : i + self.batch_size].tolist()


class PreprocessedDataset(torch.utils.data.Dataset):
    """DLE-format HDF5 shards (ours or DLE's), opened lazily, one shard cached at a time."""

    def __init__(self, directory: str | Path, seed: int = 12345, flag: str = "--train-data"):
        self.files = find_shards(directory, flag)
        sizes = []
        shapes = set()
        preds = []
        for path in self.files:
            n, seq, pred = shard_length(path)
            sizes.append(n)
            shapes.add(seq)
            preds.append(pred)
        if len(shapes) != 1:
            raise UserError(f"{flag}: shards in {directory} mix sequence lengths {sorted(shapes)}")
        self.max_seq_length = shapes.pop()
        # P of `masked_lm_positions`: the widest shard's; a blend raises it to its widest dir's
        self.max_predictions = max(preds)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.seed = seed
        self._cache: OrderedDict[int, object] = OrderedDict()
        self.vocab_size: int | None = None  # set by check_vocab: ids checked on every open
        if self.starts[-1] == 0:
            raise UserError(f"{flag}: the shards in {directory} hold no examples")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def check_vocab(self, vocab_size: int) -> None:
        """Every shard's header and the first shard's values now, before any step; the values of
        each later shard when it is opened."""
        for path in self.files:
            check_header(path, vocab_size)
        read_shard(self.files[0], vocab_size)  # not cached: DataLoader workers copy the dataset
        self.vocab_size = vocab_size

    def _shard(self, index: int):
        if index not in self._cache:
            self._cache[index] = read_shard(self.files[index], self.vocab_size)
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[index]

    def __getitem__(self, i: int) -> Example:
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        shard = self._shard(s)
        j = i - int(self.starts[s])
        seq = shard.max_seq_length
        positions = np.zeros(self.max_predictions, dtype=np.int64)  # 0-padded: 0 is [CLS]
        positions[: shard.max_predictions_per_seq] = shard.masked_lm_positions[j]
        return {
            "input_ids": shard.input_ids[j].astype(np.int64),
            "token_type_ids": shard.segment_ids[j].astype(np.int64),
            "attention_mask": shard.input_mask[j].astype(np.int64),
            "masked_lm_labels": labels_from_positions(
                shard.masked_lm_positions[j], shard.masked_lm_ids[j], seq
            ),
            "masked_lm_positions": positions,
            "next_sentence_labels": np.asarray(shard.next_sentence_labels[j], dtype=np.int64),
        }

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """Shards in a random order, examples shuffled within each: few shard loads per epoch."""
        if not shuffle:
            return np.arange(len(self))
        return self.shard_local_permutation(np.random.default_rng([self.seed, epoch]))

    def shard_local_permutation(self, gen: np.random.Generator) -> np.ndarray:
        """Every index once: shards in a random order, examples shuffled within each."""
        parts = [
            self.starts[s] + gen.permutation(int(self.sizes[s]))
            for s in gen.permutation(len(self.files))
        ]
        return np.concatenate(parts)


class TextDataset(torch.utils.data.Dataset):
    """Raw text, tokenized once into a memory-mapped token store, examples made on the fly.

    With NSP (the default), BERT's pairing runs lazily per block of documents (about
    `BLOCK_TOKENS` tokens; see `token_store`), seeded by (seed, epoch, block), when a block is
    first read in an epoch: an epoch starts without touching the corpus. Block b holds a fixed
    `capacity[b]` examples: the number of pairs it makes in epoch 0 where that was measured (up
    to `CALIBRATION_BLOCKS` blocks spread over the corpus, so every block of a small corpus),
    else its tokens times the measured pairs per token. An epoch's example j of block b is pair
    `perm[j % m]` of the m pairs the block makes that epoch (`perm` a seeded permutation): pairs
    are drawn without replacement, cycling only if the block made fewer than its capacity.

    Without NSP (`nsp=False`), examples are packed windows of the corpus stream (see
    `examples.py`): example i is window i, and `next_sentence_labels` is always 0.

    An example depends only on (seed, epoch, index): a resumed run sees exactly the batches an
    uninterrupted one would, whichever rank or DataLoader worker reads it.
    """

    CALIBRATION_BLOCKS = 8
    WINDOW_BLOCKS = 16  # blocks shuffled together: a batch mixes ~2M tokens' worth of documents

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
        nsp: bool = True,
        build: bool = True,
        store_dir: str | Path | None = None,
    ):
        paths = check_input_files(files, flag)
        self.max_seq_length = max_seq_length
        self.short_seq_prob = short_seq_prob
        self.seed = seed
        self.nsp = nsp
        self.spec = MaskingSpec.from_tokenizer(
            tokenizer, masked_lm_prob, max_predictions_per_seq, whole_word_masking
        )
        if cache_dir is None:
            # no run directory (evaluate, tests): a private store, removed with the dataset
            cache_dir = tempfile.mkdtemp(prefix="bertcli-tokens-")
            weakref.finalize(self, shutil.rmtree, cache_dir, True)
        # the reporter is used while loading only: it must not travel to DataLoader workers
        if store_dir is not None:  # another process built it (torchrun: rank 0)
            store = _open_shared(Path(store_dir))
        elif build:
            path = store_path(paths, tokenizer, input_format, Path(cache_dir))
            store = open_or_build(paths, tokenizer, input_format, path, reporter)
        else:
            store = _open_shared(store_path(paths, tokenizer, input_format, Path(cache_dir)))
        self._attach(store)
        self.stats = store.stats
        if store.stats.documents == 0 or len(store.tokens) < 2:
            raise UserError(f"{flag}: the corpus has no text to train on")
        self.epoch = 0
        self._pairs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        if nsp:
            self.capacity = self._calibrate()
        else:
            self.capacity = np.asarray(
                [packed_windows(store.stream_start, max_seq_length)], dtype=np.int64
            )
        self.index_start = np.concatenate([[0], np.cumsum(self.capacity)])
        if len(self) == 0:
            raise UserError(f"{flag}: the corpus is too short to make any example")

    # ---- the store, shared by every process through mmap ----------------------------------

    def _attach(self, store: TokenStore) -> None:
        self.store_dir = store.directory
        self.store = store
        self.corpus = store.corpus
        self.block_start = np.asarray(store.block_start)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn/forkserver re-map the store instead of receiving
        # a pickled copy of the mapped arrays
        state = self.__dict__.copy()
        for name in ("store", "corpus", "_pairs"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._attach(TokenStore.open(self.store_dir))
        self._pairs = OrderedDict()

    # ---- NSP pairs, lazily per block ------------------------------------------------------

    def _make_pairs(self, block: int, epoch: int) -> np.ndarray:
        rng = random.Random(f"{self.seed}:pairs:{epoch}:{block}")
        first, last = int(self.block_start[block]), int(self.block_start[block + 1])
        seq, short = self.max_seq_length, self.short_seq_prob
        return block_pairs(self.corpus, first, last, seq, short, rng)

    def _calibrate(self) -> np.ndarray:
        """Each block's examples per epoch (see the class docstring)."""
        num_blocks = len(self.block_start) - 1
        block_tokens = np.diff(
            np.asarray(self.corpus.sent_start[np.asarray(self.corpus.doc_start)[self.block_start]])
        )
        sample = np.unique(
            np.linspace(0, num_blocks - 1, min(num_blocks, self.CALIBRATION_BLOCKS)).astype(int)
        )
        counts = {int(b): len(self._make_pairs(int(b), 0)) for b in sample}
        rate = sum(counts.values()) / max(1, int(block_tokens[sample].sum()))
        capacity = np.maximum(1, np.round(block_tokens * rate)).astype(np.int64)
        for b, count in counts.items():
            capacity[b] = count
        return capacity

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if block not in self._pairs:
            pairs = self._make_pairs(block, self.epoch)
            gen = np.random.default_rng([self.seed, self.epoch, block, 1])
            self._pairs[block] = (pairs, gen.permutation(len(pairs)))
            while len(self._pairs) > 2 * self.WINDOW_BLOCKS:
                self._pairs.popitem(last=False)
        return self._pairs[block]

    def _pair(self, block: int, slot: int) -> tuple[int, ...]:
        num_blocks = len(self.capacity)
        for step in range(num_blocks):  # a block that made no pair this epoch lends a neighbour's
            pairs, perm = self._block((block + step) % num_blocks)
            if len(pairs):
                return tuple(int(x) for x in pairs[perm[slot % len(pairs)]])
        raise UserError("the corpus is too short to make any example")

    # ---- the Dataset interface ------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Make this epoch's examples (pairs are made per block when first read)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._pairs.clear()

    def __len__(self) -> int:
        return int(self.index_start[-1])

    def __getitem__(self, i: int) -> Example:
        seq = self.max_seq_length
        if self.nsp:
            block = int(np.searchsorted(self.index_start, i, side="right") - 1)
            pair = self._pair(block, i - int(self.index_start[block]))
            ids, segments, length = assemble(self.corpus.tokens, pair, seq, self.spec)
            label = pair[4]
        else:
            ids, segments, length = packed_example(
                self.corpus.tokens, 0, self.store.stream_start, i, seq, self.spec
            )
            label = 0
        rng = random.Random(f"{self.seed}:{self.epoch}:{i}")  # this example's masks only
        ids, positions, labels = mask_sequence(ids, length, self.spec, rng)
        mlm_labels = np.full(seq, -100, dtype=np.int64)
        mlm_labels[positions] = labels
        padded_positions = np.zeros(self.spec.max_predictions_per_seq, dtype=np.int64)
        padded_positions[: len(positions)] = positions
        mask = np.zeros(seq, dtype=np.int64)
        mask[:length] = 1
        return {
            "input_ids": ids.astype(np.int64),
            "token_type_ids": segments.astype(np.int64),
            "attention_mask": mask,
            "masked_lm_labels": mlm_labels,
            "masked_lm_positions": padded_positions,
            "next_sentence_labels": np.asarray(label, dtype=np.int64),
        }

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """This epoch's example order (and `set_epoch(epoch)`): packed windows in a random
        order; NSP examples block by block in a random block order, shuffled within windows of
        `WINDOW_BLOCKS` blocks, so a batch mixes many documents while a process pairs each block
        once. Vectorised: no corpus pass."""
        self.set_epoch(epoch)
        if not shuffle:
            return np.arange(len(self))
        gen = np.random.default_rng([self.seed, epoch, 7])
        if not self.nsp:
            return gen.permutation(len(self))
        blocks = gen.permutation(len(self.capacity))
        parts = []
        for w in range(0, len(blocks), self.WINDOW_BLOCKS):
            chosen = blocks[w : w + self.WINDOW_BLOCKS]
            starts, sizes = self.index_start[chosen], self.capacity[chosen]
            offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            parts.append(gen.permutation(np.repeat(starts, sizes) + offsets))
        return np.concatenate(parts)


def _open_shared(path: Path) -> TokenStore:
    """The store rank 0 built, as another rank sees it (marked in use, so no prune takes it)."""
    try:
        store = TokenStore.open(path)
        hold_in_use(path)
        return store
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"this rank cannot read the token store {path} that rank 0 wrote: the token cache "
            "(--cache-dir, $BERTCLI_CACHE) must be on a filesystem shared by all ranks"
        ) from None
