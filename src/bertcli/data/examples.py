"""Pure functions that turn tokenized documents into masked-LM + next-sentence examples.

This is google-research/bert's `create_pretraining_data.py` algorithm, on token *spans* of one
flat id array instead of Python lists, so it is cheap in memory and shared by `preprocess`
(static masks written to shards) and `TextDataset` (fresh masks every epoch):

* a document's sentences fill segments of `max_seq_length - 3` tokens (with probability
  `short_seq_prob` a shorter random target), split at a random sentence into A and B;
* B is a random span of another document with probability 0.5 (always when A is the whole chunk);
  the unused sentences are put back;
* the longer side is truncated one token at a time, from the front or back at random;
* `min(max_pred, max(1, round(len * masked_lm_prob)))` positions are predicted, never [CLS]/[SEP],
  80% [MASK] / 10% random token / 10% unchanged; whole-word masking groups continuation pieces.

Every draw comes from one `random.Random` in the reference's order (pairing, truncation, then
masking of that instance, then the next chunk), so `tests/data/test_examples.py` reproduces our
instances exactly with an independent port of `create_instances_from_document` and
`create_masked_lm_predictions`.

MLM-only data (`--no-nsp`) is *packed* instead (RoBERTa's FULL-SENTENCES, transformers' `run_mlm`
`group_texts`): the documents form one stream with a [SEP] after each, cut into consecutive
`max_seq_length - 2` token windows, each `[CLS] window [SEP]`, all in segment 0, label 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bertcli.errors import UserError


@dataclass
class Corpus:
    """Tokenized documents as one flat array: `tokens[sent_start[s]:sent_start[s+1]]` is sentence
    s; `doc_start[d]` is the first sentence of document d (both with a final sentinel)."""

    tokens: np.ndarray  # (num_tokens,) int32
    sent_start: np.ndarray  # (num_sentences + 1,) int64
    doc_start: np.ndarray  # (num_documents + 1,) int64

    @property
    def num_documents(self) -> int:
        return len(self.doc_start) - 1

    @classmethod
    def from_documents(cls, documents: list[list[list[int]]]) -> Corpus:
        """Build from documents -> sentences -> ids (empty sentences and documents dropped)."""
        lengths: list[int] = []
        doc_sizes: list[int] = []
        flat: list[int] = []
        for doc in documents:
            sentences = [s for s in doc if len(s)]
            if not sentences:
                continue
            doc_sizes.append(len(sentences))
            for s in sentences:
                lengths.append(len(s))
                flat.extend(s)
        sent_start = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=sent_start[1:])
        doc_start = np.zeros(len(doc_sizes) + 1, dtype=np.int64)
        np.cumsum(doc_sizes, out=doc_start[1:])
        return cls(np.asarray(flat, dtype=np.int32), sent_start, doc_start)


# The one rule for short documents, whichever path tokenizes them (preprocess, the token store):
# a document needs 2 tokens to give an A and a B; shorter ones are skipped and counted.
MIN_DOCUMENT_TOKENS = 2


def is_short_document(sentences: list[list[int]]) -> bool:
    """Whether a tokenized document has too few tokens to make any example."""
    return sum(len(s) for s in sentences) < MIN_DOCUMENT_TOKENS


def document_view(corpus: Corpus, first: int, last: int) -> Corpus:
    """Documents [first, last) as a Corpus sharing `corpus.tokens` (spans stay global)."""
    s0, s1 = int(corpus.doc_start[first]), int(corpus.doc_start[last])
    sent_start = np.asarray(corpus.sent_start[s0 : s1 + 1], dtype=np.int64)
    doc_start = np.asarray(corpus.doc_start[first : last + 1], dtype=np.int64) - s0
    return Corpus(corpus.tokens, sent_start, doc_start)


def split_long_sentences(corpus: Corpus, max_num_tokens: int) -> Corpus:
    """Cut every sentence longer than `max_num_tokens` into pieces of ceil(max/2) tokens.

    Such a sentence can never fit one example: the reference algorithm truncates it and drops
    the rest (all but 125 tokens of a 1 MB "sentence"). Halves pack two to a segment, so every
    token of it is used. Shorter sentences are left as they are (the reference's behaviour).
    """
    starts = np.asarray(corpus.sent_start, dtype=np.int64)
    lengths = np.diff(starts)
    if len(lengths) == 0 or int(lengths.max()) <= max_num_tokens:
        return corpus
    piece = (max_num_tokens + 1) // 2
    counts = np.where(lengths > max_num_tokens, -(-lengths // piece), 1)
    owner = np.repeat(np.arange(len(lengths)), counts)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    sent_start = np.append(starts[:-1][owner] + rank * piece, starts[-1])
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    return Corpus(corpus.tokens, sent_start, cumulative[np.asarray(corpus.doc_start)])


# An instance before masking: A = tokens[a0:a1], B = tokens[b0:b1], and the NSP label.
Pair = tuple[int, int, int, int, int]


def _truncate(a0: int, a1: int, b0: int, b1: int, max_num_tokens: int, rng: random.Random):
    """BERT's truncate_seq_pair on spans: trim the longer side, front or back at random."""
    while (a1 - a0) + (b1 - b0) > max_num_tokens:
        if (a1 - a0) > (b1 - b0):
            if rng.random() < 0.5:
                a0 += 1
            else:
                a1 -= 1
        else:
            if rng.random() < 0.5:
                b0 += 1
            else:
                b1 -= 1
    return a0, a1, b0, b1


def document_pairs(
    corpus: Corpus,
    doc: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
    source: Corpus | None = None,
    doc_offset: int = 0,
    on_pair: Callable[[Pair], object] | None = None,
) -> list[Pair]:
    """All (A, B, is_random_next) span pairs of one document, as the reference makes them.

    Random Bs come from `source` (default: `corpus`), where this document is number
    `doc + doc_offset`; with a `source`, a B is capped at `max_num_tokens` before truncation
    (it would be cut to fit anyway; an unsplit 1 MB sentence would cost a long trimming loop).
    `on_pair` is called with each pair as soon as it is made, before the next draw: the
    reference masks every instance there, so `on_pair` masking with `mask_sequence(..., rng)`
    draws from `rng` in the reference's order.
    """
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    ss = corpus.sent_start
    first, last = int(corpus.doc_start[doc]), int(corpus.doc_start[doc + 1])
    others = corpus if source is None else source
    own = doc + doc_offset
    num_docs = others.num_documents
    pairs: list[Pair] = []
    chunk_start = first  # first sentence of the current chunk
    length = 0
    i = first
    while i < last:
        length += int(ss[i + 1] - ss[i])
        if i == last - 1 or length >= target:
            n = i + 1 - chunk_start  # sentences in the chunk
            a_end = rng.randint(1, n - 1) if n >= 2 else 1
            a0, a1 = int(ss[chunk_start]), int(ss[chunk_start + a_end])
            if n == 1 or rng.random() < 0.5:
                is_random = 1
                target_b = target - (a1 - a0)
                other = own
                for _ in range(10):
                    other = rng.randint(0, num_docs - 1)
                    if other != own:
                        break
                o_ss = others.sent_start
                o_first = int(others.doc_start[other])
                o_last = int(others.doc_start[other + 1])
                start = rng.randint(o_first, o_last - 1)
                b0 = b1 = int(o_ss[start])
                for j in range(start, o_last):
                    b1 = int(o_ss[j + 1])
                    if b1 - b0 >= target_b:
                        break
                if source is not None:
                    b1 = min(b1, b0 + max_num_tokens)
                i -= n - a_end  # put the unused sentences back
            else:
                is_random = 0
                b0, b1 = a1, int(ss[i + 1])
            a0, a1, b0, b1 = _truncate(a0, a1, b0, b1, max_num_tokens, rng)
            if a1 > a0 and b1 > b0:
                pairs.append((a0, a1, b0, b1, is_random))
                if on_pair is not None:
                    on_pair(pairs[-1])
            chunk_start = i + 1
            length = 0
        i += 1
    return pairs


def block_pairs(
    corpus: Corpus,
    first: int,
    last: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
) -> np.ndarray:
    """(n, 5) pairs of documents [first, last), sentences longer than a segment split first;
    random Bs drawn from the whole `corpus`."""
    local = split_long_sentences(document_view(corpus, first, last), max_seq_length - 3)
    pairs: list[Pair] = []
    for d in range(local.num_documents):
        pairs.extend(
            document_pairs(
                local, d, max_seq_length, short_seq_prob, rng, source=corpus, doc_offset=first
            )
        )
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 5)


def stream_starts(corpus: Corpus) -> np.ndarray:
    """(num_documents + 1,) where each document starts in the packed stream: its tokens, then
    one [SEP]; the last entry is the stream's length."""
    token_start = np.asarray(corpus.sent_start, dtype=np.int64)[np.asarray(corpus.doc_start)]
    return token_start - token_start[0] + np.arange(len(token_start))


def packed_windows(stream_start: np.ndarray, max_seq_length: int) -> int:
    """How many `max_seq_length - 2` windows cover the stream (the last may be shorter; the
    final document's own [SEP] is left out, the closing [SEP] of the window stands for it)."""
    length = int(stream_start[-1]) - 1
    return -(-length // (max_seq_length - 2)) if length > 0 else 0


def packed_ids(
    tokens: np.ndarray, token_base: int, stream_start: np.ndarray, p0: int, p1: int, sep_id: int
) -> np.ndarray:
    """Stream positions [p0, p1) as ids: document tokens, [SEP] where a document ends.

    Stream position p of document d is token `token_base + p - d` (documents are contiguous).
    """
    positions = np.arange(p0, p1, dtype=np.int64)
    doc = np.searchsorted(stream_start, positions, side="right") - 1
    is_sep = positions == np.asarray(stream_start)[doc + 1] - 1
    index = np.where(is_sep, token_base, token_base + positions - doc)
    return np.where(is_sep, sep_id, np.asarray(tokens[index])).astype(np.int32)


def packed_example(
    tokens: np.ndarray,
    token_base: int,
    stream_start: np.ndarray,
    window: int,
    max_seq_length: int,
    spec: MaskingSpec,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Window `window` of the packed stream as [CLS] ids [SEP], padded: (ids, segments, length)."""
    width = max_seq_length - 2
    end = int(stream_start[-1]) - 1
    p0 = window * width
    body = packed_ids(tokens, token_base, stream_start, p0, min(p0 + width, end), spec.sep_id)
    length = len(body) + 2
    ids = np.full(max_seq_length, spec.pad_id, dtype=np.int32)
    ids[0] = spec.cls_id
    ids[1 : 1 + len(body)] = body
    ids[1 + len(body)] = spec.sep_id
    return ids, np.zeros(max_seq_length, dtype=np.int8), length


@dataclass
class MaskingSpec:
    """What masking needs to know about the vocabulary."""

    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_masking: bool = False
    continuation: np.ndarray | None = None  # (vocab,) bool: id continues the previous word

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word_masking: bool = False,
    ) -> MaskingSpec:
        """The spec for `tokenizer` (a `BertTokenizer`): the one place a spec is built from one."""
        return cls(
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

    def __post_init__(self) -> None:
        # the one check of the masking options, whichever command builds examples
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise UserError(f"--masked-lm-prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            raise UserError(
                f"--max-predictions-per-seq must be >= 1, got {self.max_predictions_per_seq}"
            )


def assemble(tokens: np.ndarray, pair: Pair, max_seq_length: int, spec: MaskingSpec):
    """[CLS] A [SEP] B [SEP] padded to max_seq_length: (input_ids, segment_ids, length)."""
    a0, a1, b0, b1, _ = pair
    la, lb = a1 - a0, b1 - b0
    length = la + lb + 3
    ids = np.full(max_seq_length, spec.pad_id, dtype=np.int32)
    ids[0] = spec.cls_id
    ids[1 : 1 + la] = tokens[a0:a1]
    ids[1 + la] = spec.sep_id
    ids[2 + la : 2 + la + lb] = tokens[b0:b1]
    ids[2 + la + lb] = spec.sep_id
    segments = np.zeros(max_seq_length, dtype=np.int8)
    segments[2 + la : length] = 1
    return ids, segments, length


# bit lengths of 0..4096, looked up instead of calling int.bit_length in the shuffle's loop
_BITS = [n.bit_length() for n in range(4097)]


def exact_shuffle(items: list, rng: random.Random) -> None:
    """Shuffle in place drawing exactly what `rng.shuffle(items)` draws, about 2.5x faster.

    CPython's `Random.shuffle` swaps item i with item `_randbelow(i + 1)`, from the end down,
    and `_randbelow(n)` takes `getrandbits(n.bit_length())` until the value is below n. This is
    that loop with the per-item method call inlined; masking spends most of its time here (one
    draw per candidate position), and reference parity needs the very same draws.
    """
    getrandbits = rng.getrandbits
    bits = _BITS
    for i in range(len(items) - 1, 0, -1):
        n = i + 1
        k = bits[n] if n < 4097 else n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        items[i], items[r] = items[r], items[i]


def mask_sequence(
    ids: np.ndarray, length: int, spec: MaskingSpec, rng: random.Random
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask in place: returns (ids, positions ascending, original ids at those positions).

    google-research/bert's `create_masked_lm_predictions`, drawing from `rng` in its order:
    shuffle the candidate words (pieces, or whole words), take words while they fit, and for each
    piece taken `random() < 0.8` -> [MASK], else `random() < 0.5` -> unchanged, else
    `randint(0, vocab - 1)`. As there, a continuation piece joins the previous candidate word
    even across a [SEP].
    """
    body = ids[:length]
    candidates = np.flatnonzero((body != spec.cls_id) & (body != spec.sep_id)).tolist()
    row = body.tolist()
    num_to_predict = min(
        spec.max_predictions_per_seq, max(1, int(round(length * spec.masked_lm_prob)))
    )
    if spec.whole_word_masking and spec.continuation is not None:
        cont = spec.continuation
        words: list[list[int]] = []
        for i in candidates:
            if words and cont[row[i]]:
                words[-1].append(i)
            else:
                words.append([i])
    else:
        words = candidates  # one piece per word: shuffling the positions draws the same
    exact_shuffle(words, rng)  # = rng.shuffle(words), draw for draw
    chosen: list[tuple[int, int]] = []  # (position, id shown)
    for word in words:
        if len(chosen) >= num_to_predict:
            break
        pieces = word if isinstance(word, list) else (word,)
        if len(chosen) + len(pieces) > num_to_predict:
            continue
        for i in pieces:
            if rng.random() < 0.8:
                shown = spec.mask_id
            elif rng.random() < 0.5:
                shown = row[i]
            else:
                shown = rng.randint(0, spec.vocab_size - 1)
            chosen.append((i, shown))
    chosen.sort()
    positions = np.asarray([p for p, _ in chosen], dtype=np.int32)
    labels = np.asarray([row[p] for p, _ in chosen], dtype=np.int32)
    ids[positions] = np.asarray([v for _, v in chosen], dtype=ids.dtype)
    return ids, positions, labels


def continuation_mask(tokenizer) -> np.ndarray:
    """(vocab,) bool: WordPiece `##x` pieces, or SentencePiece pieces without a leading `▁`."""
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    out = np.zeros(tokenizer.vocab_size, dtype=bool)
    for token, i in vocab.items():
        if i >= len(out) or i in tokenizer.special_ids:
            continue
        if tokenizer.kind == "wordpiece":
            out[i] = token.startswith("##")
        else:
            out[i] = not token.startswith("▁")
    return out
