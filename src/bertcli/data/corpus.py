"""Read documents and sentences from plain text, WikiText and JSON lines.

Every reader yields documents as lists of sentences (strings) and streams: memory does not grow
with the corpus. Invalid UTF-8 is replaced and counted in `CorpusStats`, never fatal; a UTF-8
byte-order mark at the start of a file is dropped. Files ending in `.gz`, `.bz2` or `.xz` are
decompressed as they are read; directories expand to their files, recursively, in sorted order.

Formats:
* `text`: one sentence per line, blank lines between documents (google-research/bert).
* `wikitext`: articles start at ` = Title = ` headings; ` = = Section = = ` headings are dropped;
  each non-empty line is a paragraph, split into sentences; the corpus's `<unk>` becomes `[UNK]`.
* `jsonl`: one JSON object per line with `text` (and optional `title`), paragraphs separated by
  newlines, as in the wiki2019zh / WikiExtractor `--json` dumps.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bertcli.errors import UserError

FORMATS = ("auto", "text", "wikitext", "jsonl")
# Compressed inputs, read as streams: suffix -> a decompressing reader over a binary file object.
COMPRESSED = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": lambda raw: bz2.BZ2File(raw, "rb"),
    ".xz": lambda raw: lzma.LZMAFile(raw, "rb"),
}
# What a damaged stream raises, turned into one line naming the file.
_STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)
_BOM = "\ufeff"
# A line is read whole (a sentence, or a JSON record): longer ones are refused, never read into
# memory, so a huge file without newlines cannot exhaust it.
MAX_LINE_BYTES = 16 << 20
# A document is held whole until it ends, so one without an end (a file without blank lines,
# a WikiText article without a next title) is cut into documents of about this many characters,
# at sentence boundaries, as google-research/bert's reader would see blank lines there. Real
# articles are far shorter (Wikipedia's longest are a few hundred kB), so ordinary corpora read
# exactly as before; `CorpusStats.split_documents` counts the documents cut.
MAX_DOCUMENT_CHARS = 1 << 20

_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKI_HEADING = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")
# End of sentence: Latin .!? (not WikiText's `@.@` number glue) followed by whitespace;
# CJK 。！？ (optionally followed by a closing quote) anywhere. Two regexes: the CJK one only
# runs on paragraphs that contain CJK stops (3x faster on Latin text).
_LATIN_END = re.compile(r"(?<=[^@][.!?])\s+")
_CJK_END = re.compile(r"(?<=[。！？])(?![”」』）)])\s*|(?<=[。！？][”」』）)])\s*")


@dataclass
class CorpusStats:
    """What reading a corpus found: counts for the report and for bad-input decisions."""

    files: int = 0
    bytes: int = 0
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    invalid_utf8_lines: int = 0
    bad_json_lines: int = 0
    split_documents: int = 0  # longer than MAX_DOCUMENT_CHARS: cut into several


class _DocumentBuffer:
    """Sentences of the document being read; hands out a piece once it reaches the cap."""

    def __init__(self, stats: CorpusStats):
        self.stats = stats
        self.sentences: list[str] = []
        self.chars = 0
        self.cut = False  # the current document was cut already (count it once)

    def add(self, sentences: Iterable[str]) -> Iterator[list[str]]:
        """Append; yields full pieces of a document past MAX_DOCUMENT_CHARS."""
        for sentence in sentences:
            self.sentences.append(sentence)
            self.chars += len(sentence)
            if self.chars >= MAX_DOCUMENT_CHARS:
                if not self.cut:
                    self.stats.split_documents += 1
                    self.cut = True
                yield self.take()

    def take(self) -> list[str]:
        doc, self.sentences, self.chars = self.sentences, [], 0
        return doc

    def end(self) -> Iterator[list[str]]:
        """The document ended: its (last) piece, if any."""
        if self.sentences:
            yield self.take()
        self.cut = False


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph at .!? followed by space and at 。！？."""
    parts = _LATIN_END.split(paragraph)
    if "。" in paragraph or "！" in paragraph or "？" in paragraph:
        parts = [piece for part in parts for piece in _CJK_END.split(part)]
    return [s.strip() for s in parts if s and s.strip()]


def check_input_files(paths: Iterable[str | Path], flag: str = "--input") -> list[Path]:
    """Existing, non-empty, non-binary files (directories expand to their files), or UserError.

    A directory contributes every file below it (hidden files and directories left out), sorted
    by path, so the corpus order does not depend on the file system."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            children = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not children:
                raise UserError(f"{flag}: directory {path} holds no files")
            files.extend(children)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{flag}: no such file {path}")
    if not files:
        raise UserError(f"{flag}: no input files given")
    for path in files:
        head = read_head(path, 8192, flag)
        if not head.strip():
            raise UserError(f"{flag}: {path} is empty")
        if b"\x00" in head:
            raise UserError(f"{flag}: {path} looks binary (NUL bytes), expected UTF-8 text")
    return files


def read_head(path: Path, size: int, flag: str = "--input") -> bytes:
    """The first `size` bytes of the (decompressed) text, or UserError for a damaged stream."""
    opener = COMPRESSED.get(path.suffix.lower())
    try:
        with path.open("rb") as raw:
            return (opener(raw) if opener else raw).read(size)
    except _STREAM_ERRORS as exc:
        raise UserError(f"{flag}: {path} cannot be read as {_kind(path)} ({exc})") from None


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return f"{suffix[1:]}-compressed text" if suffix in COMPRESSED else "a text file"


def text_suffix(path: Path) -> str:
    """The suffix that says what the text is: `.jsonl` for both c.jsonl and c.jsonl.gz."""
    if path.suffix.lower() in COMPRESSED:
        return Path(path.stem).suffix.lower()
    return path.suffix.lower()


def detect_format(path: Path) -> str:
    """Guess text / wikitext / jsonl from the name and the first lines."""
    if text_suffix(path) in (".jsonl", ".json"):
        return "jsonl"
    head = read_head(path, 65536).decode("utf-8", errors="replace").lstrip(_BOM).splitlines()
    first = [line for line in head if line.strip()][:20]
    if first and first[0].lstrip().startswith("{"):
        return "jsonl"
    if any(_WIKI_TITLE.match(line.rstrip("\n")) for line in first):
        return "wikitext"
    return "text"


def read_lines(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Decoded lines without their newline; invalid UTF-8 replaced and counted, a BOM dropped.

    `stats.bytes` counts bytes of the file as stored (compressed or not), so progress against
    the files' sizes stays right for compressed inputs."""
    stats.files += 1
    compressed = path.suffix.lower() in COMPRESSED
    with path.open("rb") as raw_file:
        handle = COMPRESSED[path.suffix.lower()](raw_file) if compressed else raw_file
        consumed = 0  # of raw_file, as of the last progress update
        first = True
        try:
            for n, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b"")):
                if len(raw) > MAX_LINE_BYTES:
                    raise UserError(
                        f"{path}: line {n + 1} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                        "expected one sentence (or one JSON record) per line"
                    )
                stats.lines += 1
                if compressed:
                    if n % 1024 == 0:  # tell() is cheap, but not free per line
                        position = raw_file.tell()
                        stats.bytes += position - consumed
                        consumed = position
                else:
                    stats.bytes += len(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    stats.invalid_utf8_lines += 1
                    line = raw.decode("utf-8", errors="replace")
                if first:
                    # a BOM would make the first JSON record unparseable (and a text line dirty)
                    line = line.removeprefix(_BOM)
                    first = False
                yield line.rstrip("\r\n")
        except _STREAM_ERRORS as exc:
            raise UserError(f"{path} cannot be read as {_kind(path)} ({exc})") from None
        finally:
            if compressed:
                stats.bytes += raw_file.tell() - consumed
                handle.close()


def _text_documents(path: Path, stats: CorpusStats) -> Iterator[list[str]]:
    doc = _DocumentBuffer(stats)
    for line in read_lines(path, stats):
        line = line.strip()
        if line:
            yield from doc.add((line,))
        else:
            yield from doc.end()
    yield from doc.end()


def _wikitext_documents(path: Path, stats: CorpusStats, split: bool = True) -> Iterator[list[str]]:
    doc = _DocumentBuffer(stats)
    for line in read_lines(path, stats):
        if _WIKI_HEADING.match(line):
            continue
        if _WIKI_TITLE.match(line):
            yield from doc.end()
            continue
        text = line.strip()
        if text:
            text = text.replace("<unk>", "[UNK]")
            yield from doc.add(split_sentences(text) if split else [text])
    yield from doc.end()


def _jsonl_documents(path: Path, stats: CorpusStats, split: bool = True) -> Iterator[list[str]]:
    for line in read_lines(path, stats):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
            if not isinstance(text, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            stats.bad_json_lines += 1
            continue
        paragraphs = [p.strip() for p in text.split("\n") if p.strip()]
        title = record.get("title") if isinstance(record, dict) else None
        if paragraphs and isinstance(title, str) and paragraphs[0] == title.strip():
            paragraphs = paragraphs[1:]  # wiki2019zh repeats the title as the first line
        sentences = [s for p in paragraphs for s in split_sentences(p)] if split else paragraphs
        doc = _DocumentBuffer(stats)
        yield from doc.add(sentences)
        yield from doc.end()


# readers of paragraphs, which `split` turns into sentences; text has one sentence per line
_READERS = {"wikitext": _wikitext_documents, "jsonl": _jsonl_documents}


def resolve_format(path: Path, fmt: str) -> str:
    """`auto` resolved per file; anything else checked."""
    if fmt not in FORMATS:
        raise UserError(f"--input-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return detect_format(path) if fmt == "auto" else fmt


def read_documents(
    paths: Iterable[Path],
    fmt: str = "auto",
    stats: CorpusStats | None = None,
    split: bool = True,
) -> Iterator[list[str]]:
    """All documents of all files, in order, as lists of sentences (paragraphs if not split)."""
    stats = stats if stats is not None else CorpusStats()
    for path in paths:
        name = resolve_format(path, fmt)
        docs = _text_documents(path, stats) if name == "text" else _READERS[name](path, stats, split)
        for doc in docs:
            stats.documents += 1
            stats.sentences += len(doc)
            yield doc


def read_texts(
    paths: Iterable[Path], fmt: str = "auto", stats: CorpusStats | None = None
) -> Iterator[list[str]]:
    """Batches of paragraphs for tokenizer training (`[UNK]` markers left out: not words).

    Sentence splitting is skipped: it does not change which words the trainer counts."""
    batch: list[str] = []
    for doc in read_documents(paths, fmt, stats, split=False):
        batch.extend(sentence.replace("[UNK]", " ") for sentence in doc)
        if len(batch) >= 1000:
            yield batch
            batch = []
    if batch:
        yield batch
