"""Labelled data for fine-tuning: TSV / CSV / JSON-lines / CoNLL files -> examples -> features.

Readers name the file and line of anything they cannot use (`UserError`), so a bad row is one
error line, not a traceback. Sequence examples become `[CLS] a [SEP] (b [SEP])` with the pair
truncated longest-first, as transformers' tokenizers do. NER sentences are aligned word by word:
the first sub-token of a word carries its tag, the others -100 (as `run_ner.py`); a sentence
longer than `max_seq_length` is cut into consecutive windows of whole words, so no word loses
its prediction.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bertcli.errors import UserError
from bertcli.finetune.tasks import Task
from bertcli.model import IGNORE_INDEX
from bertcli.tokenizer import BertTokenizer

TAG = re.compile(r"^(O|[BI]-\S+)$")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class Example:
    """One sequence example; `line` is where it starts in its file (1-based)."""

    text: str
    pair: str | None
    label: str
    line: int


@dataclass
class Sentence:
    """One CoNLL sentence."""

    tokens: list[str]
    tags: list[str]
    line: int


@dataclass
class Columns:
    """Where text, pair and label are: a header name or a 0-based index (None: no pair)."""

    text: int | str | None
    pair: int | str | None
    label: int | str | None
    header: bool = True


def read_text(path: Path, flag: str) -> str:
    """The file as text, BOM dropped; binary or non-UTF-8 data is one error line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path}: a directory, not a file") from None
    except OSError as exc:
        raise UserError(f"{flag} {path}: unreadable ({exc.strerror})") from None
    if b"\x00" in raw:
        raise UserError(f"{flag} {path}: binary data, not a text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{flag} {path}:{line}: not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{flag} {path}: empty file")
    return text


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "tsv"


def _rows(path: Path, text: str, flag: str) -> list[tuple[int, list[str] | dict]]:
    """(line, row) of every non-blank row; JSON lines give dicts."""
    fmt = _format(path)
    if fmt == "jsonl":
        rows: list[tuple[int, list[str] | dict]] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{flag} {path}:{number}: not a JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{flag} {path}:{number}: not a JSON object")
            rows.append((number, row))
        return rows
    if fmt == "tsv":  # GLUE's TSVs hold bare quotes: no quoting, one line per row
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    out = []
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                out.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{flag} {path}:{reader.line_num}: not valid CSV ({exc})") from None
    return out


def _index(spec: int | str, header: list[str] | None, path: Path, flag: str, option: str) -> int:
    if isinstance(spec, int):
        return spec
    if spec.lstrip("-").isdigit():
        return int(spec)
    if header is None:
        raise UserError(f"{option} {spec!r}: {path} has no header (give a 0-based index)")
    names = [h.strip() for h in header]
    if spec not in names:
        raise UserError(
            f"{option} {spec!r}: {flag} {path} has no such column (columns: {', '.join(names)})"
        )
    return names.index(spec)


def _cell(row, spec, index, path, flag, line, option) -> object:
    if isinstance(row, dict):
        if spec not in row:
            raise UserError(f"{option} {spec!r}: {flag} {path}:{line} has no such key")
        return row[spec]
    if not -len(row) <= index < len(row):
        raise UserError(
            f"{option} {spec!r}: {flag} {path}:{line} has {len(row)} columns, no column {index}"
        )
    return row[index]


def _as_text(value: object, path, flag, line, option) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise UserError(f"{option}: {flag} {path}:{line} holds {json.dumps(value)}, not text")
    return str(value)


def _text_spec(spec, keys: list[str] | None, path, flag) -> int | str:
    """--text-column's default: 'sentence', else 'text' (a header name or JSON key)."""
    if spec is not None:
        return spec
    names = [k.strip() for k in keys or []]
    for name in ("sentence", "text"):
        if name in names:
            return name
    raise UserError(f"{flag} {path}: give --text-column (a header name or a 0-based index)")


def read_examples(path: Path, columns: Columns, flag: str) -> list[Example]:
    """Sequence examples of a TSV, CSV or JSON-lines file."""
    path = Path(path)
    text = read_text(path, flag)
    rows = _rows(path, text, flag)
    is_jsonl = _format(path) == "jsonl"
    header = None
    if not is_jsonl and columns.header and rows:
        header = rows.pop(0)[1]
    if not rows:
        raise UserError(f"{flag} {path}: no examples")
    keys = list(rows[0][1]) if is_jsonl else header
    text_spec = _text_spec(columns.text, keys, path, flag)
    label_spec = columns.label if columns.label is not None else "label"
    specs = {"--text-column": text_spec, "--label-column": label_spec}
    if columns.pair is not None:
        specs["--text-pair-column"] = columns.pair
    indices = {}
    for option, spec in specs.items():
        if is_jsonl:
            if isinstance(spec, int) or str(spec).lstrip("-").isdigit():
                raise UserError(f"{option} {spec}: JSON lines need a key name, not an index")
            indices[option] = None
        else:
            indices[option] = _index(spec, header, path, flag, option)
    out = []
    for line, row in rows:
        cells = {
            option: _as_text(
                _cell(row, specs[option], indices[option], path, flag, line, option),
                path,
                flag,
                line,
                option,
            )
            for option in specs
        }
        out.append(
            Example(
                cells["--text-column"],
                cells.get("--text-pair-column"),
                cells["--label-column"].strip(),
                line,
            )
        )
    return out


def task_columns(task: Task, text=None, pair=None, label=None, header: bool = True) -> Columns:
    """GLUE tasks fix their columns; the generic ones take the user's."""
    if task.is_glue:
        return Columns(task.text, task.text_pair, task.label, task.header)
    return Columns(text, pair, label, header)


def read_conll(path: Path, flag: str) -> list[Sentence]:
    """CoNLL-style sentences: token in the first column, tag in the last; whitespace-only lines
    break sentences; -DOCSTART- lines are skipped."""
    path = Path(path)
    text = read_text(path, flag)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tokens, tags, start))
            tokens, tags = [], []
            continue
        if len(parts) < 2:
            raise UserError(f"{flag} {path}:{number}: expected a token and a tag, got {line!r}")
        if not TAG.match(parts[-1]):
            raise UserError(f"{flag} {path}:{number}: tag {parts[-1]!r} is not O, B-TYPE or I-TYPE")
        if not tokens:
            start = number
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        sentences.append(Sentence(tokens, tags, start))
    if not sentences:
        raise UserError(f"{flag} {path}: no sentences")
    return sentences


# ---- labels -------------------------------------------------------------------------------------


def label_list(task: Task, train_labels: list[str]) -> list[str]:
    """GLUE's label list, else the training file's distinct labels, sorted (as run_glue.py)."""
    if task.kind == "regression":
        return ["LABEL_0"]  # transformers' name for the one output
    if task.labels is not None:
        return list(task.labels)
    return sorted(set(train_labels))


def label_ids(
    labels: list[str], values: list[str], lines: list[int], path: Path, flag: str, task: Task
) -> list[float] | list[int]:
    """Each example's label as a class id (or a float for regression); an unknown label is
    one error naming it and its line."""
    if task.kind == "regression":
        out = []
        for value, line in zip(values, lines):
            try:
                out.append(float(value))
            except ValueError:
                raise UserError(
                    f"{flag} {path}:{line}: label {value!r} is not a number (regression)"
                ) from None
        return out
    ids = {label: i for i, label in enumerate(labels)}
    result = []
    for value, line in zip(values, lines):
        if value not in ids:
            where = "GLUE's labels" if task.is_glue else "the training data"
            raise UserError(
                f"{flag} {path}:{line}: label {value!r} is not in {where} "
                f"({', '.join(labels[:10])}{' …' if len(labels) > 10 else ''})"
            )
        result.append(ids[value])
    return result


# ---- features -----------------------------------------------------------------------------------


def _truncate_pair(a: list[int], b: list[int] | None, room: int) -> tuple[list[int], list[int]]:
    """Longest-first truncation (transformers' default): drop from the longer, b on ties."""
    b = list(b or [])
    a = list(a)
    while len(a) + len(b) > room:
        if len(b) >= len(a) and b:
            b.pop()
        else:
            a.pop()
    return a, b


def encode_examples(
    tokenizer: BertTokenizer, examples: list[Example], targets: list, max_seq_length: int
) -> list[dict]:
    """Features `{input_ids, token_type_ids, label}` (no padding: batches pad themselves)."""
    firsts = tokenizer.encode_batch([e.text for e in examples])
    pairs = [e.pair is not None for e in examples]
    seconds = tokenizer.encode_batch([e.pair or "" for e in examples])
    out = []
    for a, b, has_pair, target in zip(firsts, seconds, pairs, targets):
        room = max_seq_length - (3 if has_pair else 2)
        a, b = _truncate_pair(a, b if has_pair else None, room)
        ids = [tokenizer.cls_id, *a, tokenizer.sep_id]
        types = [0] * len(ids)
        if has_pair:
            ids += [*b, tokenizer.sep_id]
            types += [1] * (len(b) + 1)
        out.append({"input_ids": ids, "token_type_ids": types, "label": target})
    return out


def encode_sentences(
    tokenizer: BertTokenizer, sentences: list[Sentence], tag_ids: list[list[int]], max_seq_length
) -> list[dict]:
    """NER windows `{input_ids, token_type_ids, labels, sentence, first_word, words, starts}`:
    `starts` are the positions of each word's first sub-token; -100 elsewhere in `labels`."""
    room = max_seq_length - 2
    out = []
    encodings = tokenizer.tokenizer.encode_batch(
        [s.tokens for s in sentences], is_pretokenized=True, add_special_tokens=False
    )
    for index, (sentence, tags, enc) in enumerate(zip(sentences, tag_ids, encodings)):
        pieces: list[list[int]] = [[] for _ in sentence.tokens]
        for token_id, word in zip(enc.ids, enc.word_ids):
            if word is not None:
                pieces[word].append(token_id)
        # a word the tokenizer drops entirely (control characters) still gets a prediction
        pieces = [p[:room] or [tokenizer.unk_id] for p in pieces]
        first = 0
        while first < len(pieces):
            end, used = first, 0
            while end < len(pieces) and used + len(pieces[end]) <= room:
                used += len(pieces[end])
                end += 1
            ids, labels, starts = [tokenizer.cls_id], [IGNORE_INDEX], []
            for word in range(first, end):
                starts.append(len(ids))
                labels += [tags[word]] + [IGNORE_INDEX] * (len(pieces[word]) - 1)
                ids += pieces[word]
            ids.append(tokenizer.sep_id)
            labels.append(IGNORE_INDEX)
            out.append(
                {
                    "input_ids": ids,
                    "token_type_ids": [0] * len(ids),
                    "labels": labels,
                    "sentence": index,
                    "first_word": first,
                    "starts": starts,
                }
            )
            first = end
    return out


def collate_features(features: list[dict], pad_id: int, regression: bool = False) -> dict:
    """Pad a batch to its own longest sequence (dynamic padding)."""
    width = max(len(f["input_ids"]) for f in features)
    B = len(features)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    types = torch.zeros((B, width), dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    token_labels = "labels" in features[0]
    labels = (
        torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
        if token_labels
        else torch.tensor(
            [f["label"] for f in features], dtype=torch.float32 if regression else torch.long
        )
    )
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"])
        types[i, :n] = torch.tensor(f["token_type_ids"])
        mask[i, :n] = 1
        if token_labels:
            labels[i, :n] = torch.tensor(f["labels"])
    return {
        "input_ids": input_ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "labels": labels,
    }
