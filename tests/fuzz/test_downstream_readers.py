"""Fuzz the downstream readers: any bytes as TSV / CSV / JSON lines / CoNLL give examples or
one UserError, never another exception."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from bertcli.errors import UserError
from bertcli.finetune import data as fdata

FUZZ = settings(
    max_examples=int(os.environ.get("BERTCLI_FUZZ_EXAMPLES", "40")),
    derandomize=True,
    deadline=None,
    database=None,
)

# bytes that look like the formats (separators, quotes, braces, BOMs, tags) plus noise
PIECES = st.sampled_from(
    [
        b"\t",
        b",",
        b"\n",
        b"\r\n",
        b'"',
        b"{",
        b"}",
        b":",
        b"\xef\xbb\xbf",
        b"label",
        b"text",
        b"B-x",
        b"I-y",
        b"O",
        b"-DOCSTART-",
        b"0",
        b"1",
        b" ",
        b"\x00",
        b"\xff",
        b"caf\xc3\xa9",
        b'{"text": "a", "label": 1}',
        b"[1]",
        b"null",
    ]
)
CONTENT = st.one_of(st.binary(max_size=200), st.lists(PIECES, max_size=40).map(b"".join))


def _check(call):
    try:
        result = call()
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return None
    return result


@FUZZ
@given(content=CONTENT, suffix=st.sampled_from([".tsv", ".csv", ".jsonl"]), header=st.booleans())
def test_table_readers(tmp_path_factory, content, suffix, header):
    path = tmp_path_factory.mktemp("fz") / f"data{suffix}"
    path.write_bytes(content)
    columns = fdata.Columns("text" if header else "0", None, "label" if header else "1", header)
    rows = _check(lambda: fdata.read_examples(path, columns, "--train-data"))
    if rows is not None:
        assert rows and all(isinstance(e.text, str) and isinstance(e.label, str) for e in rows)


@FUZZ
@given(content=CONTENT)
def test_conll_reader(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fz") / "data.conll"
    path.write_bytes(content)
    sentences = _check(lambda: fdata.read_conll(path, "--train-data"))
    if sentences is not None:
        for s in sentences:
            assert s.tokens and len(s.tokens) == len(s.tags)
            assert all(fdata.TAG.match(t) for t in s.tags)
