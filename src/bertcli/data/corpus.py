"""Read documents and sentences from plain text, WikiText and JSON lines.

Every reader yields documents as lists of sentences (strings) and streams: memory does not grow
with the corpus. Invalid UTF-8 is replaced and counted in `CorpusStats`, never fatal.

Formats:
* `text`: one sentence per line, blank lines between documents (google-research/bert).
* `wikitext`: articles start at ` = Title = ` headings; ` = = Section = = ` headings are dropped;
  each non-empty line is a paragraph, split into sentences; the corpus's `<unk>` becomes `[UNK]`.
* `jsonl`: one JSON object per line with `text` (and optional `title`), paragraphs separated by
  newlines, as in the wiki2019zh / WikiExtractor `--json` dumps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bertcli.errors import UserError

FORMATS = ("auto", "text", "wikitext", "jsonl")

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


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph at .!? followed by space and at 。！？."""
    parts = _LATIN_END.split(paragraph)
    if "。" in paragraph or "！" in paragraph or "？" in paragraph:
        parts = [piece for part in parts for piece in _CJK_END.split(part)]
    return [s.strip() for s in parts if s and s.strip()]


def check_input_files(paths: Iterable[str | Path], flag: str = "--input") -> list[Path]:
    """Existing, non-empty, non-binary files (directories expand to their files), or UserError."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            children = sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
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
        with path.open("rb") as handle:
            head = handle.read(8192)
        if not head.strip():
            raise UserError(f"{flag}: {path} is empty")
        if b"\x00" in head:
            raise UserError(f"{flag}: {path} looks binary (NUL bytes), expected UTF-8 text")
    return files


def detect_format(path: Path) -> str:
    """Guess text / wikitext / jsonl from the name and the first lines."""
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    with path.open("rb") as handle:
        head = handle.read(65536).decode("utf-8", errors="replace").splitlines()
    first = [line for line in head if line.strip()][:20]
    if first and first[0].lstrip().startswith("{"):
        return "jsonl"
    if any(_WIKI_TITLE.match(line.rstrip("\n")) for line in first):
        return "wikitext"
    return "text"


def read_lines(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Decoded lines without their newline; invalid UTF-8 replaced and counted."""
    stats.files += 1
    with path.open("rb") as handle:
        for raw in handle:
            stats.bytes += len(raw)
            stats.lines += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.invalid_utf8_lines += 1
                line = raw.decode("utf-8", errors="replace")
            yield line.rstrip("\r\n")


def _text_documents(path: Path, stats: CorpusStats, split: bool = True) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in read_lines(path, stats):
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def _wikitext_documents(path: Path, stats: CorpusStats, split: bool = True) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in read_lines(path, stats):
        if _WIKI_HEADING.match(line):
            continue
        if _WIKI_TITLE.match(line):
            if doc:
                yield doc
            doc = []
            continue
        text = line.strip()
        if text:
            text = text.replace("<unk>", "[UNK]")
            doc.extend(split_sentences(text) if split else [text])
    if doc:
        yield doc


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
        doc = [s for p in paragraphs for s in split_sentences(p)] if split else paragraphs
        if doc:
            yield doc


_READERS = {"text": _text_documents, "wikitext": _wikitext_documents, "jsonl": _jsonl_documents}


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
        reader = _READERS[resolve_format(path, fmt)]
        for doc in reader(path, stats, split):
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
