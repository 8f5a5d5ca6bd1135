"""Train, wrap, import and load BERT tokenizers, all through Hugging Face `tokenizers`.

A tokenizer directory is the one thing later commands take (`--tokenizer DIR`). It holds
`tokenizer.json` (the full pipeline), `vocab.txt` for WordPiece (line i is id i, always), and
`tokenizer_config.json` + `special_tokens_map.json` so `transformers.AutoTokenizer` loads it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from bertcli.atomic import atomic_directory
from bertcli.console import Reporter
from bertcli.data.corpus import CorpusStats, check_input_files, read_texts
from bertcli.errors import UserError, check_space, writing

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"


@dataclass
class BertTokenizer:
    """A loaded tokenizer and the ids of BERT's special tokens."""

    tokenizer: Tokenizer
    kind: str  # "wordpiece" or "sentencepiece"
    lowercase: bool
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    path: Path | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without [CLS]/[SEP] (Rust, parallel)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def _pair_template(cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _bert_normalizer(lowercase: bool) -> normalizers.Normalizer:
    # BERT's BasicTokenizer NFC-normalises first; strip_accents=None follows lowercase, as there.
    return normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
            ),
        ]
    )


def _wordpiece_pipeline(tokenizer: Tokenizer, lowercase: bool) -> None:
    tokenizer.normalizer = _bert_normalizer(lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")


def _special_ids(tokenizer: Tokenizer, source: str) -> dict[str, int]:
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    missing = [tok for tok, i in ids.items() if i is None]
    if missing:
        raise UserError(f"{source}: vocabulary lacks the special tokens {' '.join(missing)}")
    return ids  # type: ignore[return-value]


def _sampled(
    batches: Iterator[list[str]], sample_size: int | None, seed: int = 12345
) -> Iterator[list[str]]:
    """All batches, or a reservoir sample of `sample_size` sentences (NeMo's sample_size)."""
    if not sample_size:
        yield from batches
        return
    rng = random.Random(seed)
    reservoir: list[str] = []
    i = 0
    for batch in batches:
        for line in batch:
            if i < sample_size:
                reservoir.append(line)
            else:
                j = rng.randint(0, i)
                if j < sample_size:
                    reservoir[j] = line
            i += 1
    for start in range(0, len(reservoir), 1000):
        yield reservoir[start : start + 1000]


def _progress_lines(
    files: list[Path], fmt: str, stats: CorpusStats, reporter: Reporter
) -> Iterator[list[str]]:
    total = sum(f.stat().st_size for f in files)
    reporter.start("Reading corpus", total=total, unit="bytes")
    seen = 0
    for batch in read_texts(files, fmt, stats):
        reporter.advance(stats.bytes - seen)
        seen = stats.bytes
        yield batch
    reporter.advance(stats.bytes - seen)
    reporter.finish()


def train_tokenizer(
    kind: str,
    files: Iterable[str | Path],
    vocab_size: int,
    out: str | Path,
    min_frequency: int = 2,
    sample_size: int | None = None,
    lowercase: bool = True,
    input_format: str = "auto",
    reporter: Reporter | None = None,
    exact: bool = True,
) -> tuple[BertTokenizer, CorpusStats]:
    """Train a WordPiece or Unigram (SentencePiece-style) vocabulary of exactly `vocab_size`
    (with `exact=False`, a corpus too small for it gives the largest vocabulary it supports)."""
    reporter = reporter or Reporter()
    if kind not in ("wordpiece", "sentencepiece"):
        raise UserError(f"--type must be wordpiece or sentencepiece, got {kind!r}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UserError(f"--vocab-size {vocab_size} is too small: at least the 5 special tokens")
    if min_frequency < 0:
        raise UserError(f"--min-frequency must be >= 0, got {min_frequency}")
    if sample_size is not None and sample_size <= 0:
        raise UserError(f"--sample-size must be positive, got {sample_size}")
    paths = check_input_files(files, "--train-data")
    stats = CorpusStats()
    lines = _sampled(_progress_lines(paths, input_format, stats, reporter), sample_size)

    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        _wordpiece_pipeline(tokenizer, lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            continuing_subword_prefix="##",
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            unk_token="[UNK]",
            show_progress=False,
        )
    characters: set[str] = set()
    try:
        tokenizer.train_from_iterator(_noting_characters(lines, characters), trainer)
    except Exception as exc:  # tokenizers raises a bare Exception
        if "not large enough to contain all chars" not in str(exc):
            raise
        got = vocab_size + 1  # Unigram refuses outright when the alphabet alone does not fit
    else:
        got = tokenizer.get_vocab_size()
    if stats.sentences == 0:
        raise UserError("--train-data: the corpus has no text")
    if got > vocab_size and kind == "wordpiece":  # it keeps every character: got is the least
        raise UserError(
            f"--vocab-size {vocab_size} is too small for this corpus: every character (alone and "
            f"as a ## continuation) plus the 5 special tokens need --vocab-size {got} or more"
        )
    if got > vocab_size:  # Unigram overshoots by an arbitrary amount: count its alphabet
        chars = _unigram_alphabet(tokenizer, characters)
        raise UserError(
            f"--vocab-size {vocab_size} is too small for this corpus: its {chars} distinct "
            f"characters, the 5 special tokens and one more piece need --vocab-size "
            f"{chars + len(SPECIAL_TOKENS) + 1} or more"
        )
    if got < vocab_size and exact:
        raise UserError(
            f"the corpus yields only {got} tokens, fewer than --vocab-size {vocab_size}; "
            "lower --vocab-size or --min-frequency, or give more text"
        )
    ids = _special_ids(tokenizer, "trained tokenizer")
    tokenizer.post_processor = _pair_template(ids["[CLS]"], ids["[SEP]"])
    result = _wrap(tokenizer, kind, lowercase)
    save_tokenizer(result, out)
    result.path = Path(out)
    return result, stats


def _noting_characters(batches: Iterator[list[str]], seen: set[str]) -> Iterator[list[str]]:
    """Pass batches through, adding their characters to `seen` (C speed: one set update)."""
    for batch in batches:
        seen.update("".join(batch))
        yield batch


def _unigram_alphabet(tokenizer: Tokenizer, raw: set[str]) -> int:
    """How many characters a Unigram vocabulary must hold (the trainer's `required_chars`):
    what the normalizer and Metaspace make of the raw characters.

    tokenizers' Unigram trainer needs one slot beyond these and the specials: measured on
    English and Chinese corpora, size alphabet + specials + 1 is exact, one less overshoots."""
    normalized = tokenizer.normalizer.normalize_str("".join(sorted(raw)))
    alphabet = set(normalized.replace(" ", "▁")) | {"▁"}
    return len(alphabet - set("\n\r"))


def read_vocab_file(path: str | Path) -> list[str]:
    """Tokens of a BERT vocab.txt (line i = id i), checked for specials and duplicates."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--vocab-file: no such file {path}")
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"--vocab-file: {path} looks binary, expected one token per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"--vocab-file: {path} is not valid UTF-8 ({exc.reason})") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise UserError(f"--vocab-file: {path} is empty")
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in seen:
            raise UserError(
                f"--vocab-file: {path} line {i + 1} repeats {tok!r} (first on line {seen[tok] + 1});"
                " ids would not match lines"
            )
        seen[tok] = i
    missing = [t for t in ("[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]") if t not in seen]
    if missing:
        raise UserError(f"--vocab-file: {path} lacks the special tokens {' '.join(missing)}")
    return tokens


def infer_lowercase(tokens: list[str]) -> bool:
    """Uncased vocabularies have (almost) no uppercase tokens outside [SPECIAL] ones."""
    ordinary = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    upper = sum(1 for t in ordinary if any(c.isupper() for c in t))
    return upper <= 0.01 * max(1, len(ordinary))


def tokenizer_from_vocab(path: str | Path, lowercase: bool | None = None) -> BertTokenizer:
    """BERT's WordPiece tokenizer over a published vocab.txt (lowercasing inferred if None)."""
    tokens = read_vocab_file(path)
    if lowercase is None:
        lowercase = infer_lowercase(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    _wordpiece_pipeline(tokenizer, lowercase)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    ids = _special_ids(tokenizer, str(path))
    tokenizer.post_processor = _pair_template(ids["[CLS]"], ids["[SEP]"])
    return _wrap(tokenizer, "wordpiece", lowercase)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message; enough for ModelProto."""
    import struct

    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<d", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<f", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield field, wire, value


def read_sentencepiece_model(path: str | Path) -> tuple[list[tuple[str, float, int]], int]:
    """(piece, score, type) triples and the model type of a SentencePiece `.model` file.

    ModelProto: 1 = repeated SentencePiece {1 piece, 2 score, 3 type}, 2 = TrainerSpec {3 type}.
    Piece types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    """
    import struct  # its error is what a truncated fixed-width field raises

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sentencepiece-model: no such file {path}")
    try:
        pieces: list[tuple[str, float, int]] = []
        model_type = 1  # UNIGRAM
        for field, wire, value in _protobuf_fields(path.read_bytes()):
            if field == 1 and wire == 2:
                piece, score, kind = None, 0.0, 1
                for f, w, v in _protobuf_fields(value):  # type: ignore[arg-type]
                    if f == 1 and w == 2:
                        piece = v.decode("utf-8")  # type: ignore[union-attr]
                    elif f == 2 and w == 5:
                        score = float(v)  # type: ignore[arg-type]
                    elif f == 3 and w == 0:
                        kind = int(v)  # type: ignore[arg-type]
                if piece is None:
                    raise ValueError("a piece without text")
                pieces.append((piece, score, kind))
            elif field == 2 and wire == 2:
                for f, w, v in _protobuf_fields(value):  # type: ignore[arg-type]
                    if f == 3 and w == 0:
                        model_type = int(v)  # type: ignore[arg-type]
    except (ValueError, UnicodeDecodeError, IndexError, struct.error, OverflowError) as exc:
        raise UserError(
            f"--sentencepiece-model: {path} is not a readable SentencePiece model ({exc})"
        ) from None
    if not pieces:
        raise UserError(f"--sentencepiece-model: {path} is not a SentencePiece model (no pieces)")
    return pieces, model_type


def tokenizer_from_sentencepiece(path: str | Path, lowercase: bool = False) -> BertTokenizer:
    """Import a SentencePiece Unigram model, adding BERT's special tokens after its pieces."""
    pieces, model_type = read_sentencepiece_model(path)
    if model_type != 1:
        raise UserError(
            f"--sentencepiece-model: {path} is a {'BPE' if model_type == 2 else 'non-Unigram'} "
            "model; only Unigram SentencePiece models can be imported"
        )
    vocab: list[tuple[str, float]] = []
    unk_id = None
    for i, (piece, score, kind) in enumerate(pieces):
        if kind == 2:
            unk_id = i
            piece = "[UNK]"
        vocab.append((piece, score))
    if unk_id is None:
        raise UserError(f"--sentencepiece-model: {path} has no unknown piece")
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    controls = [p for p, _, kind in pieces if kind == 3]
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS) + controls)
    ids = _special_ids(tokenizer, str(path))
    tokenizer.post_processor = _pair_template(ids["[CLS]"], ids["[SEP]"])
    return _wrap(tokenizer, "sentencepiece", lowercase)


def _wrap(tokenizer: Tokenizer, kind: str, lowercase: bool) -> BertTokenizer:
    # A tokenizer.json may carry padding and truncation (sentence-transformers' models pad and
    # cut every text to 128: all-MiniLM-L6-v2 does). bertcli encodes whole lines and documents
    # and sizes sequences itself; kept, they would silently cut every line at 128 tokens and
    # fill the corpus with [PAD].
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = _special_ids(tokenizer, "tokenizer")
    return BertTokenizer(
        tokenizer=tokenizer,
        kind=kind,
        lowercase=lowercase,
        pad_id=ids["[PAD]"],
        unk_id=ids["[UNK]"],
        cls_id=ids["[CLS]"],
        sep_id=ids["[SEP]"],
        mask_id=ids["[MASK]"],
    )


def write_tokenizer_files(tok: BertTokenizer, directory: Path) -> None:
    """All tokenizer files into an existing directory (used by checkpoints too)."""
    tok.tokenizer.save(str(directory / TOKENIZER_FILE))
    if tok.kind == "wordpiece":
        vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise RuntimeError("vocabulary ids are not contiguous")
        (directory / VOCAB_FILE).write_text("".join(f"{t}\n" for t, _ in by_id), encoding="utf-8")
    specials = {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "BertTokenizerFast"
        if tok.kind == "wordpiece"
        else "PreTrainedTokenizerFast",
        "do_lower_case": tok.lowercase,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "bertcli_kind": tok.kind,
        **specials,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (directory / SPECIAL_MAP_FILE).write_text(
        json.dumps(specials, indent=2) + "\n", encoding="utf-8"
    )


def save_tokenizer(tok: BertTokenizer, out: str | Path) -> Path:
    """Write the tokenizer directory atomically: a temp dir renamed into place."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / TOKENIZER_FILE).exists():
        raise UserError(f"--out {out} is a non-empty directory that is not a tokenizer directory")
    # tokenizer.json plus vocab.txt (smaller) and two small configs
    needed = 2 * len(tok.tokenizer.to_str().encode()) + (64 << 10)
    check_space(out, needed, "the tokenizer")
    with writing(out, needed, "the tokenizer"), atomic_directory(out) as tmp:
        write_tokenizer_files(tok, tmp)
    return out


def load_tokenizer(path: str | Path) -> BertTokenizer:
    """Load a tokenizer directory (or a bare vocab.txt) with its special-token ids."""
    path = Path(path)
    if path.is_file() and path.suffix == ".txt":
        return tokenizer_from_vocab(path)
    if not path.is_dir():
        raise UserError(f"--tokenizer: no such directory {path}")
    tokenizer_file = path / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        if (path / VOCAB_FILE).is_file():
            return tokenizer_from_vocab(path / VOCAB_FILE, _config_lowercase(path))
        raise UserError(f"--tokenizer: {path} is not a tokenizer directory (no {TOKENIZER_FILE})")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
        raise UserError(f"--tokenizer: {tokenizer_file} is unreadable ({exc})") from None
    config = _read_config(path)
    kind = config.get("bertcli_kind") or (
        "wordpiece" if isinstance(tokenizer.model, models.WordPiece) else "sentencepiece"
    )
    lowercase = bool(config.get("do_lower_case", False))
    result = _wrap(tokenizer, kind, lowercase)
    result.path = path
    return result


def _read_config(path: Path) -> dict:
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _config_lowercase(path: Path) -> bool | None:
    value = _read_config(path).get("do_lower_case")
    return None if value is None else bool(value)


def tokenizer_from_options(
    tokenizer_dir: str | Path | None, vocab_file: str | Path | None, lowercase: bool | None = None
) -> BertTokenizer | None:
    """What --tokenizer DIR or --vocab-file FILE name (at most one; None if neither): the one
    check of that pair, for every command that takes them."""
    if tokenizer_dir is not None and vocab_file is not None:
        raise UserError("give --tokenizer or --vocab-file, not both")
    if tokenizer_dir is not None:
        return load_tokenizer(tokenizer_dir)
    if vocab_file is not None:
        return tokenizer_from_vocab(vocab_file, lowercase)
    return None
