"""Corpus text and JSON lines (plain and compressed) from strangers."""

from __future__ import annotations

import bz2
import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bertcli.data.corpus import check_input_files, read_documents, read_texts
from tests.fuzz.conftest import FUZZ, read_within_bounds
from tests.fuzz.strategies import JSON

LINES = st.lists(
    st.text(max_size=80)
    | st.sampled_from(["", " = Title = ", " = = Section = = ", "<unk> . ", "。！？", "\ufeff"])
    | JSON.map(json.dumps)
    | st.dictionaries(st.sampled_from(["text", "title", "id"]), JSON).map(json.dumps),
    max_size=30,
)


def _corpus(lines: list[str], raw: bytes) -> bytes:
    return ("\n".join(lines)).encode("utf-8", errors="surrogatepass") + raw


@FUZZ
@given(
    lines=LINES,
    raw=st.binary(max_size=64),
    suffix=st.sampled_from([".txt", ".jsonl", ".raw", ".txt.gz", ".jsonl.bz2", ".xz"]),
    fmt=st.sampled_from(["auto", "text", "wikitext", "jsonl"]),
    compress=st.booleans(),
)
def test_corpus_files(lines, raw, suffix, fmt, compress):
    data = _corpus(lines, raw)
    if compress and suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif compress and suffix.endswith(".bz2"):
        data = bz2.compress(data)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"c{suffix}"
        path.write_bytes(data)

        def read() -> None:
            files = check_input_files([path])
            list(read_documents(files, fmt))
            list(read_texts(files, fmt))

        read_within_bounds(read)
