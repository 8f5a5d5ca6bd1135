"""Extend a published WordPiece vocabulary with the pieces a domain corpus needs.

`extend_tokenizer` keeps every id of the base: new pieces take the base's `[unused*]` slots
first (bert-base-uncased has 994), then go after its last id. They are ordinary WordPiece
entries (`##` continuations included), so a slow `BertTokenizer` over the new `vocab.txt`
tokenizes exactly as our `tokenizer.json` does; `extension.json` beside them records, for each
new piece, its base tokenization, which `pretrain --init-from` uses to initialise its row (FVT,
see `vocab_resize.py`).

How pieces are chosen. A WordPiece vocabulary of the base's size is trained on the corpus with
the base's own normaliser and pre-tokenizer (Hugging Face `tokenizers`); its pieces that the
base lacks are the candidates. The corpus is counted as distinct words (what the base's
pre-tokenizer yields, after its normaliser) with their frequencies. The *cost* of a word under
a vocabulary is the number of tokens greedy longest-match-first WordPiece gives it; a word it
cannot tokenize (it becomes `[UNK]`) costs its length in characters plus one, more than any
tokenization of it, so a piece that makes it readable counts as a saving. The *saving* of a
candidate is the sum over the corpus words it can occur in of frequency x (cost now - cost with
the candidate added), found by re-tokenizing those words: WordPiece is greedy, so a new piece
can also make a word worse, and that counts against it. Selection is greedy with lazy
re-evaluation: every candidate's saving against the base is computed once; then the candidate
with the largest saving is re-evaluated against the vocabulary chosen so far and taken if it is
still the largest, else put back with its new saving (ties: the piece's text). Savings are not
strictly submodular under greedy WordPiece, so stale savings are upper bounds only
approximately; the re-evaluation is what keeps two overlapping pieces from both being taken for
the same tokens. Pieces whose saving is not positive are never taken, and a piece that later
choices leave unused on the corpus is dropped and replaced.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, models, trainers

from bertcli.atomic import atomic_directory
from bertcli.console import Reporter
from bertcli.data.corpus import CorpusStats, check_input_files
from bertcli.errors import UserError, check_space, writing
from bertcli.tokenizer import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    VOCAB_FILE,
    BertTokenizer,
    _progress_lines,
    _sampled,
    load_tokenizer,
    tokenizer_from_vocab,
    write_tokenizer_files,
)

EXTENSION_FILE = "extension.json"
PREFIX = "##"
_SLOT = re.compile(r"\[unused\d+\]")


def vocab_tokens(tok: BertTokenizer) -> list[str]:
    """The tokens of a tokenizer by id (line i of its vocab.txt is id i)."""
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        if i >= len(tokens):
            raise UserError(f"{tok.path or 'tokenizer'}: vocabulary ids are not contiguous")
        tokens[i] = token
    return tokens


def vocab_sha256(tokens: list[str]) -> str:
    """sha256 of the vocabulary as a vocab.txt (one token per line, LF): the published files'
    own checksum (bert-base-uncased: 07eced37…)."""
    return hashlib.sha256("".join(f"{t}\n" for t in tokens).encode("utf-8")).hexdigest()


def is_slot(token: str) -> bool:
    """A placeholder line BERT's vocabularies reserve for new tokens (`[unused12]`)."""
    return bool(_SLOT.fullmatch(token))


def load_base(value: str | Path, reporter: Reporter | None = None) -> tuple[BertTokenizer, str]:
    """--extend BASE: a tokenizer dir, a vocab.txt, a checkpoint (or run dir) with tokenizer
    files, or a published name (fetched as `pretrain --init-from NAME` does). Returns the
    tokenizer and how the base is named in extension.json."""
    from bertcli.hub import is_model_name, resolve_model
    from bertcli.train.checkpoint import resolve_checkpoint

    path = Path(value)
    if path.is_file():
        tok = tokenizer_from_vocab(path)
    elif path.is_dir():
        source = resolve_checkpoint(path)
        if not ((source / TOKENIZER_FILE).is_file() or (source / VOCAB_FILE).is_file()):
            raise UserError(f"--extend {value}: no {TOKENIZER_FILE} or {VOCAB_FILE} there")
        tok = load_tokenizer(source)
    elif is_model_name(str(value)):
        snapshot = resolve_model(str(value), "--extend", log=reporter)
        tok = load_tokenizer(snapshot)
        return _check_wordpiece(tok, str(value)), str(value)
    else:
        raise UserError(
            f"--extend {value}: no such file or directory, and not a published model name"
        )
    return _check_wordpiece(tok, str(value)), str(path.resolve())


def _check_wordpiece(tok: BertTokenizer, value: str) -> BertTokenizer:
    model = json.loads(tok.tokenizer.to_str())["model"]
    if model.get("type") != "WordPiece":
        raise UserError(
            f"--extend {value}: its tokenizer is a {model.get('type')} model, not WordPiece; "
            "only WordPiece vocabularies can be extended"
        )
    if model.get("continuing_subword_prefix", PREFIX) != PREFIX:
        raise UserError(f"--extend {value}: continuation prefix is not {PREFIX!r}")
    return tok


def wordpiece(
    word: str, vocab: set[str] | dict[str, int], max_len: int, continuation: bool = False
) -> list[str] | None:
    """Greedy longest-match-first WordPiece of one word (None: it is [UNK]), as BERT's
    WordpieceTokenizer; `continuation` tokenizes it as the rest of a word (`##` first)."""
    if len(word) > 100:
        return None
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = min(len(word), start + max_len)
        while end > start:
            piece = word[start:end]
            if start > 0 or continuation:
                piece = PREFIX + piece
            if piece in vocab:
                break
            end -= 1
        else:
            return None
        pieces.append(piece)
        start = end
    return pieces


def _cost(word: str, vocab: set[str], max_len: int) -> int:
    pieces = wordpiece(word, vocab, max_len)
    return len(word) + 1 if pieces is None else len(pieces)


def _piece_len(piece: str) -> int:
    return len(piece) - len(PREFIX) if piece.startswith(PREFIX) else len(piece)


@dataclass
class NewPiece:
    """One piece added to the vocabulary, as extension.json records it."""

    piece: str
    id: int
    slot: str | None  # the [unused*] token it replaced, None when appended
    saving: int  # base tokens it saved on the corpus when it was chosen
    count: int = 0  # how often the extended tokenizer emits it on the corpus
    base_tokens: list[str] = field(default_factory=list)
    base_ids: list[int] = field(default_factory=list)


@dataclass
class Extension:
    """The result of `extend_tokenizer`: the new tokenizer and what it added."""

    tokenizer: BertTokenizer
    pieces: list[NewPiece]
    base: dict
    corpus: dict


class _Corpus:
    """Distinct words and their counts, under the base's normaliser and pre-tokenizer."""

    def __init__(self, base: Tokenizer):
        self.normalizer = base.normalizer
        self.pre_tokenizer = base.pre_tokenizer
        self.counts: Counter[str] = Counter()

    def noting(self, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        """Pass batches on to the trainer, counting their words on the way."""
        for batch in batches:
            text = "\n".join(batch)
            if self.normalizer is not None:
                text = self.normalizer.normalize_str(text)
            self.counts.update(w for w, _ in self.pre_tokenizer.pre_tokenize_str(text))
            yield batch


def _candidates(corpus_lines: Iterator[list[str]], base: BertTokenizer, min_frequency: int):
    """Pieces of a WordPiece vocabulary trained on the corpus (base's size, base's normaliser)."""
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    trained.normalizer = base.tokenizer.normalizer
    trained.pre_tokenizer = base.tokenizer.pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=base.vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=PREFIX,
        show_progress=False,
    )
    trained.train_from_iterator(corpus_lines, trainer)
    return [t for t in trained.get_vocab() if t not in SPECIAL_TOKENS]


class _Selection:
    """The greedy choice of pieces (see the module docstring for the ranking)."""

    def __init__(self, counts: Counter[str], base_vocab: set[str], candidates: list[str]):
        self.vocab = set(base_vocab)
        self.candidates = sorted(c for c in set(candidates) - self.vocab if _piece_len(c) > 0)
        self.max_len = max(
            [_piece_len(t) for t in self.vocab] + [_piece_len(c) for c in self.candidates]
        )
        self.words = list(counts)
        self.freq = [counts[w] for w in self.words]
        self.cost = [_cost(w, self.vocab, self.max_len) for w in self.words]
        self.affected = self._index()

    def _index(self) -> dict[str, list[int]]:
        """For each candidate, the words (costing more than one token) it can occur in."""
        wanted = set(self.candidates)
        longest = max((_piece_len(c) for c in self.candidates), default=0)
        affected: dict[str, list[int]] = {c: [] for c in self.candidates}
        for i, word in enumerate(self.words):
            if self.cost[i] <= 1:
                continue  # already one token: longest-match takes the whole word first
            seen: set[str] = set()
            for start in range(len(word)):
                for end in range(start + 1, min(len(word), start + longest) + 1):
                    piece = word[start:end] if start == 0 else PREFIX + word[start:end]
                    if piece in wanted and piece not in seen:
                        seen.add(piece)
                        affected[piece].append(i)
        return affected

    def saving(self, piece: str) -> int:
        """Base tokens saved on the corpus by adding `piece` to the vocabulary chosen so far."""
        self.vocab.add(piece)
        try:
            return sum(
                self.freq[i] * (self.cost[i] - _cost(self.words[i], self.vocab, self.max_len))
                for i in self.affected[piece]
            )
        finally:
            self.vocab.discard(piece)

    def take(self, piece: str) -> None:
        self.vocab.add(piece)
        for i in self.affected[piece]:
            self.cost[i] = _cost(self.words[i], self.vocab, self.max_len)

    def choose(self, n: int, reporter: Reporter) -> list[tuple[str, int]]:
        """Up to `n` (piece, saving) pairs, most useful first.

        A piece that later pieces made idle (the corpus never emits it any more: "belie" once
        "believe" and "##f" are in) is dropped and its place refilled; dropping a piece no word
        uses changes no tokenization, so the other savings stay true."""
        reporter.start("Ranking candidate pieces", total=len(self.candidates), unit="pieces")
        heap = []
        for piece in self.candidates:
            gain = self.saving(piece)
            if gain > 0:
                heap.append((-gain, piece, 0))
            reporter.advance(1)
        reporter.finish()
        heapq.heapify(heap)
        chosen: dict[str, int] = {}
        dropped: set[str] = set()
        version = 0  # bumped on every change of the vocabulary: older savings are stale
        reporter.start("Choosing pieces", total=n, unit="pieces")
        while True:
            while heap and len(chosen) < n:
                neg, piece, seen_at = heapq.heappop(heap)
                if piece in dropped:
                    continue
                if seen_at == version:  # its saving is current: it is the best
                    self.take(piece)
                    chosen[piece] = -neg
                    version += 1
                    reporter.advance(1)
                    continue
                gain = self.saving(piece)
                if gain > 0:
                    heapq.heappush(heap, (-gain, piece, version))
            used = self.emitted(set(chosen))
            idle = [p for p in chosen if used[p] == 0]
            if not idle:
                break
            for piece in idle:
                del chosen[piece]
                self.vocab.discard(piece)
                dropped.add(piece)
            version += 1
            reporter.advance(-len(idle))
        reporter.finish()
        return list(chosen.items())

    def tokens(self, vocab: set[str] | None = None) -> int:
        """Tokens the corpus takes under `vocab` (default: the chosen one), [UNK] as one."""
        vocab = self.vocab if vocab is None else vocab
        total = 0
        for word, freq in zip(self.words, self.freq):
            pieces = wordpiece(word, vocab, self.max_len)
            total += freq * (1 if pieces is None else len(pieces))
        return total

    def emitted(self, pieces: set[str]) -> Counter[str]:
        """How often the chosen vocabulary emits each of `pieces` on the corpus."""
        counts: Counter[str] = Counter()
        words = sorted({i for p in pieces for i in self.affected[p]})
        for i in words:
            for piece in wordpiece(self.words[i], self.vocab, self.max_len) or []:
                if piece in pieces:
                    counts[piece] += self.freq[i]
        return counts


def _check_out(out: Path) -> None:
    """Refuse what save_tokenizer refuses, before the long work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / TOKENIZER_FILE).exists():
        raise UserError(f"--out {out} is a non-empty directory that is not a tokenizer directory")


def _extended_tokenizer(base: BertTokenizer, tokens: list[str], replaced: set[str]):
    """The base's pipeline (normaliser, pre-tokenizer, template) over the new vocabulary."""
    spec = json.loads(base.tokenizer.to_str())
    spec["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    spec["added_tokens"] = [a for a in spec.get("added_tokens", []) if a["content"] not in replaced]
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    return BertTokenizer(
        tokenizer=tokenizer,
        kind="wordpiece",
        lowercase=base.lowercase,
        pad_id=base.pad_id,
        unk_id=base.unk_id,
        cls_id=base.cls_id,
        sep_id=base.sep_id,
        mask_id=base.mask_id,
    )


def extend_tokenizer(
    base_value: str | Path,
    files: list[str | Path],
    add_tokens: int,
    out: str | Path,
    min_frequency: int = 2,
    sample_size: int | None = None,
    input_format: str = "auto",
    reporter: Reporter | None = None,
) -> Extension:
    """Add the `add_tokens` pieces that save the most base tokens on `files` to the base's
    vocabulary (slots first, then appended) and write the tokenizer dir with extension.json."""
    reporter = reporter or Reporter()
    if add_tokens < 1:
        raise UserError(f"--add-tokens must be >= 1, got {add_tokens}")
    if min_frequency < 0:
        raise UserError(f"--min-frequency must be >= 0, got {min_frequency}")
    if sample_size is not None and sample_size <= 0:
        raise UserError(f"--sample-size must be positive, got {sample_size}")
    out = Path(out)
    _check_out(out)
    paths = check_input_files(files, "--train-data")
    base, base_name = load_base(base_value, reporter)
    base_tokens = vocab_tokens(base)

    stats = CorpusStats()
    corpus = _Corpus(base.tokenizer)
    lines = _sampled(_progress_lines(paths, input_format, stats, reporter), sample_size)
    candidates = _candidates(corpus.noting(lines), base, min_frequency)
    if stats.sentences == 0 or not corpus.counts:
        raise UserError("--train-data: the corpus has no text")

    selection = _Selection(corpus.counts, set(base_tokens), candidates)
    chosen = selection.choose(add_tokens, reporter)
    if len(chosen) < add_tokens:
        raise UserError(
            f"--add-tokens {add_tokens}: the corpus offers only {len(chosen)} new pieces that "
            "save tokens under the base vocabulary; lower --add-tokens or give more text"
        )

    slots = [i for i, t in enumerate(base_tokens) if is_slot(t)]
    tokens = list(base_tokens)
    base_vocab = {t: i for i, t in enumerate(base_tokens)}
    max_len = max(_piece_len(t) for t in base_tokens)
    pieces: list[NewPiece] = []
    for k, (piece, gain) in enumerate(chosen):
        if k < len(slots):
            new_id, slot = slots[k], base_tokens[slots[k]]
            tokens[new_id] = piece
        else:
            new_id, slot = len(tokens), None
            tokens.append(piece)
        text = piece[len(PREFIX) :] if piece.startswith(PREFIX) else piece
        under_base = wordpiece(text, base_vocab, max_len, piece.startswith(PREFIX)) or ["[UNK]"]
        pieces.append(
            NewPiece(
                piece=piece,
                id=new_id,
                slot=slot,
                saving=gain,
                base_tokens=under_base,
                base_ids=[base_vocab[t] for t in under_base],
            )
        )
    emitted = selection.emitted({p.piece for p in pieces})
    for p in pieces:
        p.count = emitted[p.piece]

    replaced = {p.slot for p in pieces if p.slot is not None}
    tok = _extended_tokenizer(base, tokens, replaced)
    base_info = {
        "source": base_name,
        "vocab_sha256": vocab_sha256(base_tokens),
        "vocab_size": len(base_tokens),
        "lowercase": base.lowercase,
    }
    corpus_info = {
        "files": [str(p) for p in paths],
        "words": sum(corpus.counts.values()),
        "distinct_words": len(corpus.counts),
        "candidates": len(selection.candidates),
        "base_tokens": selection.tokens(set(base_tokens)),
        "extended_tokens": selection.tokens(),
    }
    result = Extension(tokenizer=tok, pieces=pieces, base=base_info, corpus=corpus_info)
    _save(result, out)
    tok.path = out
    return result


def extension_record(ext: Extension) -> dict:
    """What extension.json holds."""
    return {
        "format": 1,
        "base": ext.base,
        "vocab_size": ext.tokenizer.vocab_size,
        "slots_filled": sum(1 for p in ext.pieces if p.slot is not None),
        "appended": sum(1 for p in ext.pieces if p.slot is None),
        "corpus": ext.corpus,
        "pieces": [
            {
                "piece": p.piece,
                "id": p.id,
                "slot": p.slot,
                "count": p.count,
                "saving": p.saving,
                "base_tokens": p.base_tokens,
                "base_ids": p.base_ids,
            }
            for p in ext.pieces
        ],
    }


def _save(ext: Extension, out: Path) -> None:
    record = json.dumps(extension_record(ext), indent=2, ensure_ascii=False) + "\n"
    needed = 2 * len(ext.tokenizer.tokenizer.to_str().encode()) + len(record) + (64 << 10)
    check_space(out, needed, "the tokenizer")
    with writing(out, needed, "the tokenizer"), atomic_directory(out) as tmp:
        write_tokenizer_files(ext.tokenizer, tmp)
        (tmp / EXTENSION_FILE).write_text(record, encoding="utf-8")


def read_extension(directory: Path) -> dict | None:
    """A tokenizer directory's extension.json, or None when it has none."""
    path = Path(directory) / EXTENSION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    readable = (
        isinstance(data, dict)
        and isinstance(data.get("base"), dict)
        and isinstance(data["base"].get("vocab_sha256"), str)
        and isinstance(data.get("pieces"), list)
        and all(
            isinstance(p, dict) and {"piece", "id", "base_ids"} <= p.keys() for p in data["pieces"]
        )
    )
    if not readable:
        raise UserError(f"{path}: not a readable {EXTENSION_FILE}")
    return data
