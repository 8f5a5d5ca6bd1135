"""Corpus reading at scale: compressed streams, directories of many files, a UTF-8 BOM."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest

from bertcli.data.corpus import CorpusStats, check_input_files, detect_format, read_documents
from bertcli.errors import UserError
from tests.conftest import WIKITEXT2, ZH_DIR, require

COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_compressed_reads_as_the_plain_file(tmp_path, suffix):
    text = require(WIKITEXT2 / "valid.txt").read_bytes()[:200_000]
    text = text[: text.rindex(b"\n") + 1]  # whole lines
    (tmp_path / "c.txt").write_bytes(text)
    packed = tmp_path / f"c.txt{suffix}"
    packed.write_bytes(COMPRESS[suffix](text))
    plain_stats, packed_stats = CorpusStats(), CorpusStats()
    plain = list(read_documents([tmp_path / "c.txt"], stats=plain_stats))
    assert detect_format(packed) == "wikitext"
    assert list(read_documents([packed], stats=packed_stats)) == plain and len(plain) > 3
    assert packed_stats.lines == plain_stats.lines == text.count(b"\n")
    # progress counts the stored (compressed) bytes, so it ends at the file's size
    assert packed_stats.bytes == packed.stat().st_size < plain_stats.bytes == len(text)


def test_compressed_jsonl_is_detected_by_its_inner_suffix(tmp_path):
    lines = require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl").read_bytes().splitlines()[:3]
    (tmp_path / "zh.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    assert detect_format(tmp_path / "zh.jsonl.gz") == "jsonl"
    assert len(list(read_documents([tmp_path / "zh.jsonl.gz"]))) == 3


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_damaged_stream_is_one_user_error(tmp_path, suffix):
    text = require(WIKITEXT2 / "valid.txt").read_bytes()
    cut = tmp_path / f"cut.txt{suffix}"
    cut.write_bytes(COMPRESS[suffix](text)[:20_000])  # the stream stops early
    with pytest.raises(UserError, match=f"cut.txt{suffix} cannot be read as"):
        list(read_documents(check_input_files([cut])))
    (tmp_path / f"not.txt{suffix}").write_bytes(b"plain words, not compressed\n" * 10)
    with pytest.raises(UserError, match=f"not.txt{suffix} cannot be read as"):
        check_input_files([tmp_path / f"not.txt{suffix}"])


def test_directory_is_recursive_sorted_and_skips_hidden(tmp_path):
    for rel in ("b/2.txt", "a/z.txt", "a/sub/1.txt.gz", "0.txt", ".hidden.txt", ".git/x.txt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"{rel} says hello .\n".encode()
        path.write_bytes(gzip.compress(data) if rel.endswith(".gz") else data)
    files = check_input_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "0.txt",
        "a/sub/1.txt.gz",
        "a/z.txt",
        "b/2.txt",
    ]
    docs = list(read_documents(files, "text"))
    assert [d[0].split()[0] for d in docs] == ["0.txt", "a/sub/1.txt.gz", "a/z.txt", "b/2.txt"]


def test_jsonl_bom_keeps_the_first_record(tmp_path):
    records = [json.dumps({"text": f"Record {i} is here. It has two sentences."}) for i in range(3)]
    body = "\n".join(records).encode()
    for name in ("bom.jsonl", "bom.data"):  # by suffix, and by content
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body)
        stats = CorpusStats()
        docs = list(read_documents([tmp_path / name], stats=stats))
        assert detect_format(tmp_path / name) == "jsonl"
        assert stats.bad_json_lines == 0 and len(docs) == 3
        assert docs[0] == ["Record 0 is here.", "It has two sentences."]


def test_text_bom_is_not_part_of_the_first_sentence(tmp_path):
    (tmp_path / "t.txt").write_bytes("\ufeffFirst line .\nSecond line .\n".encode())
    assert list(read_documents([tmp_path / "t.txt"], "text")) == [["First line .", "Second line ."]]


def test_a_document_without_an_end_is_cut_at_sentence_boundaries(tmp_path, monkeypatch):
    import bertcli.data.corpus as corpus

    monkeypatch.setattr(corpus, "MAX_DOCUMENT_CHARS", 100)
    sentences = [f"Sentence number {i} is here." for i in range(40)]  # 26-27 chars each
    path = tmp_path / "c.txt"
    path.write_text("\n".join(sentences) + "\n\nA short one.\nAnd another.\n")
    stats = corpus.CorpusStats()
    docs = list(corpus.read_documents([path], "text", stats))
    assert [s for d in docs[:-1] for s in d] == sentences  # nothing lost, order kept
    assert all(sum(map(len, d)) < 100 + 27 for d in docs[:-1])  # cut once past the cap
    assert docs[-1] == ["A short one.", "And another."]  # an ordinary document, untouched
    assert stats.split_documents == 1 and stats.documents == len(docs)

    wiki = tmp_path / "w.txt"
    wiki.write_text(" = Title = \n" + " ".join(sentences) + "\n = Next = \n Short text . \n")
    stats = corpus.CorpusStats()
    docs = list(corpus.read_documents([wiki], "wikitext", stats))
    assert stats.split_documents == 1 and docs[-1] == ["Short text ."]

    record = json.dumps({"text": " ".join(sentences)})
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text(record + "\n" + json.dumps({"text": "Tiny."}) + "\n")
    stats = corpus.CorpusStats()
    docs = list(corpus.read_documents([jsonl], "jsonl", stats))
    assert stats.split_documents == 1 and docs[-1] == ["Tiny."] and len(docs) > 3
