"""Dump XML, dumpstatus.json and sha1 lists from a mirror nobody vouches for."""

from __future__ import annotations

import bz2
import io
import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bertcli.wikidump import parse_dumpstatus, parse_sha1sums
from bertcli.wikipedia import clean_batch, extract, iter_pages
from tests.conftest import SHARED
from tests.fuzz.conftest import FUZZ, read_within_bounds
from tests.fuzz.strategies import JSON, json_objects, mutated

_DUMP = (
    SHARED / "wikipedia" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
_EXCERPT = bz2.decompress(_DUMP.read_bytes())[:20000] if _DUMP.is_file() else b"<mediawiki/>"
NAME = "enwiki-20260101-pages-articles-multistream1.xml-p10p30302.bz2"

WIKITEXT = st.lists(
    st.sampled_from(
        ["{{", "}}", "[[", "]]", "|", "{|", "|}", "<ref>", "</ref>", "<!--", "-->", "-{", "}-",
         "==", "\n", "'''", "[http://x y]", "<math>", "</math>", "&amp;", "&#x10FFFF;", "#REDIRECT",
         "[[File:a|thumb|b]]", "<nowiki>", "<br/>", "*", ":", ";", "__TOC__", "&lt;"]
    )
    | st.text(max_size=10),
    max_size=40,
).map("".join)  # fmt: skip


def _xml(pages: list[tuple[str, str, str]]) -> bytes:
    from xml.sax.saxutils import escape

    body = "".join(
        f"<page><title>{escape(t)}</title><ns>{escape(ns)}</ns><id>1</id><revision>"
        f"<text>{escape(text)}</text></revision></page>"
        for t, ns, text in pages
    )
    return f"<mediawiki><siteinfo><base>x/y</base></siteinfo>{body}</mediawiki>".encode()


def _read_dump(data: bytes) -> None:
    sites: list = []
    pages = [(p.id, p.title, p.text) for p in iter_pages(io.BytesIO(data), sites)]
    clean_batch(pages)


@FUZZ
@given(data=mutated(_EXCERPT) | st.binary(max_size=200))
def test_dump_xml_bytes(data):
    # iter_pages raises ParseError on broken XML: extract() reports it as a cut, so call that
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "d.xml"
        path.write_bytes(data)
        read_within_bounds(lambda: extract([path], Path(directory) / "out"))


@FUZZ
@given(
    pages=st.lists(
        st.tuples(st.text(max_size=10), st.sampled_from(["0", "1", "x", ""]), WIKITEXT),
        max_size=5,
    )
)
def test_dump_pages_and_wikitext(pages):
    chars = [c for c in "".join(t + n + x for t, n, x in pages) if 0xD800 <= ord(c) <= 0xDFFF]
    data = _xml(pages) if not chars else b"<mediawiki/>"
    read_within_bounds(lambda: _read_dump(_clean_xml(data)))


def _clean_xml(data: bytes) -> bytes:
    """XML 1.0 forbids most control characters; a dump never holds them unescaped."""
    return bytes(b for b in data if b >= 0x20 or b in (0x09, 0x0A, 0x0D))


_STATUS = {
    "jobs": {
        "articlesmultistreamdump": {
            "status": "done",
            "files": {NAME: {"size": 10, "sha1": "a" * 40, "url": "/x"}},
        }
    }
}


@FUZZ
@given(
    data=mutated(json.dumps(_STATUS).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
    | json_objects(["jobs"]).map(lambda v: json.dumps(v).encode())
    | st.dictionaries(
        st.sampled_from(["articlesmultistreamdump", "articlesdump"]),
        json_objects(["status", "files"]) | JSON,
    ).map(lambda jobs: json.dumps({"jobs": jobs}).encode())
    | st.binary(max_size=100)
)
def test_dumpstatus_json(data):
    read_within_bounds(lambda: parse_dumpstatus(data, "enwiki", "20260101", "dumpstatus.json"))


@FUZZ
@given(text=st.text(max_size=300) | st.lists(st.text(max_size=60)).map("\n".join))
def test_sha1_lists(text):
    read_within_bounds(lambda: parse_sha1sums(f"{'b' * 40}  {NAME}\n{text}\n*{text}"))
