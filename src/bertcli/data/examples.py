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
"""

from __future__ import annotations

import random
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
) -> list[Pair]:
    """All (A, B, is_random_next) span pairs of one document, as the reference makes them."""
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    ss = corpus.sent_start
    first, last = int(corpus.doc_start[doc]), int(corpus.doc_start[doc + 1])
    num_docs = corpus.num_documents
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
                other = doc
                for _ in range(10):
                    other = rng.randint(0, num_docs - 1)
                    if other != doc:
                        break
                o_first, o_last = int(corpus.doc_start[other]), int(corpus.doc_start[other + 1])
                start = rng.randint(o_first, o_last - 1)
                b0 = b1 = int(ss[start])
                for j in range(start, o_last):
                    b1 = int(ss[j + 1])
                    if b1 - b0 >= target_b:
                        break
                i -= n - a_end  # put the unused sentences back
            else:
                is_random = 0
                b0, b1 = a1, int(ss[i + 1])
            a0, a1, b0, b1 = _truncate(a0, a1, b0, b1, max_num_tokens, rng)
            if a1 > a0 and b1 > b0:
                pairs.append((a0, a1, b0, b1, is_random))
            chunk_start = i + 1
            length = 0
        i += 1
    return pairs


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


def mask_sequence(
    ids: np.ndarray, length: int, spec: MaskingSpec, gen: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask in place: returns (ids, positions ascending, original ids at those positions)."""
    body = np.arange(length)
    special = (ids[:length] == spec.cls_id) | (ids[:length] == spec.sep_id)
    candidates = body[~special]
    num_to_predict = min(
        spec.max_predictions_per_seq, max(1, int(round(length * spec.masked_lm_prob)))
    )
    if spec.whole_word_masking and spec.continuation is not None:
        positions = _whole_word_positions(ids, candidates, num_to_predict, spec, gen)
    else:
        positions = gen.permutation(candidates)[:num_to_predict]
    positions = np.sort(positions)
    labels = ids[positions].copy()
    r = gen.random(len(positions))
    keep_or_random = gen.random(len(positions))
    replacement = gen.integers(0, spec.vocab_size, len(positions), dtype=np.int32)
    new = np.where(r < 0.8, spec.mask_id, np.where(keep_or_random < 0.5, labels, replacement))
    ids[positions] = new
    return ids, positions.astype(np.int32), labels.astype(np.int32)


def _whole_word_positions(ids, candidates, num_to_predict, spec, gen) -> np.ndarray:
    """Group continuation pieces with their word, shuffle words, take whole words greedily."""
    cont = spec.continuation[ids[candidates]]
    # a new word starts at every non-continuation piece and after any gap (a [SEP])
    starts = ~cont
    starts[0] = True
    gaps = np.diff(candidates) != 1
    starts[1:] |= gaps
    word_ids = np.cumsum(starts) - 1
    num_words = int(word_ids[-1]) + 1 if len(word_ids) else 0
    chosen: list[int] = []
    count = 0
    for w in gen.permutation(num_words):
        if count >= num_to_predict:
            break
        members = candidates[word_ids == w]
        if count + len(members) > num_to_predict:
            continue
        chosen.extend(members.tolist())
        count += len(members)
    return np.asarray(chosen, dtype=np.int64)


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
