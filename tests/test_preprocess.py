"""preprocess end to end: CLI output layout, eval split, JSON input, compressed input trees,
worker counts, shard sizes, and kills in the middle."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertcli import preprocess as pp
from bertcli.data.datasets import PreprocessedDataset
from bertcli.preprocess import PreprocessConfig, preprocess
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, ZH_DIR, require


@pytest.fixture(scope="module")
def uncased():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


def test_cli_layout_and_eval_split(invoke, tmp_path):
    (tmp_path / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text()[:300_000])
    result = invoke(
        "preprocess",
        "--input",
        tmp_path / "c.txt",
        "--vocab-file",
        VOCAB_DIR / "bert-base-uncased.txt",
        "--out",
        tmp_path / "out",
        "--eval-fraction",
        "0.2",
        "--dupe-factor",
        "1",
        "--shard-size",
        "400",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    directory = (
        tmp_path
        / "out"
        / (
            "lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_1"
        )
    )
    assert summary["directory"] == str(directory)
    shards = sorted(p.name for p in directory.glob("*.hdf5"))
    assert shards[0] == "training_00000.hdf5" and len(shards) == summary["train_shards"] > 1
    assert all("training" in name for name in shards)  # DLE's loader filters on 'training'
    assert len(PreprocessedDataset(directory)) == summary["train_examples"]
    assert len(PreprocessedDataset(directory / "eval")) == summary["eval_examples"] > 0
    assert json.loads((directory / "preprocess.json").read_text())["result"]["train_examples"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_chinese_jsonl(tmp_path):
    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-chinese.txt"))
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text(
        "\n".join(
            require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl").read_text().splitlines()[:5]
        )
    )
    result = preprocess(PreprocessConfig([corpus], tmp_path / "o", dupe_factor=1, workers=1), tok)
    assert result.documents == 5 and result.train_examples > 50
    data = PreprocessedDataset(result.directory)
    text = tok.tokenizer.decode(data[0]["input_ids"].tolist())
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_kill_in_the_middle_leaves_nothing_complete(uncased, tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(require(WIKITEXT2 / "valid.txt").read_text())
    original = pp.make_block_examples
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pp, "make_block_examples", dying)
    monkeypatch.setattr(pp, "BLOCK_DOCUMENTS", 8)
    config = PreprocessConfig(
        [tmp_path / "c.txt"], tmp_path / "out", dupe_factor=1, workers=1, shard_size=100
    )
    with pytest.raises(KeyboardInterrupt):
        preprocess(config, uncased)
    assert list((tmp_path / "out").iterdir()) == []


def test_invalid_utf8_is_replaced_and_counted(uncased, tmp_path):
    text = require(WIKITEXT2 / "valid.txt").read_bytes()[:100_000]
    (tmp_path / "c.txt").write_bytes(text + b"\n = Bad = \n\n caf\xe9 au lait \xff is here .\n")
    result = preprocess(
        PreprocessConfig([tmp_path / "c.txt"], tmp_path / "o", dupe_factor=1, workers=1), uncased
    )
    assert result.invalid_utf8_lines == 1 and result.train_examples > 0


def test_jsonl_bad_lines_are_skipped_and_counted(uncased, tmp_path):
    records = [
        json.dumps({"title": "T", "text": f"T\nSentence {i} is here. Another one follows."})
        for i in range(40)
    ]
    records.insert(3, "{not json")
    records.insert(7, json.dumps({"no_text": 1}))
    (tmp_path / "c.jsonl").write_text("\n".join(records) + "\n")
    result = preprocess(
        PreprocessConfig(
            [tmp_path / "c.jsonl"], tmp_path / "o", dupe_factor=1, workers=1, max_seq_length=32
        ),
        uncased,
    )
    assert result.bad_json_lines == 2 and result.documents == 40


def _shard_rows(directory) -> list[tuple[str, int]]:
    import h5py

    rows = []
    for path in sorted(directory.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            rows.append((path.name, len(f["input_ids"])))
    return rows


def test_directory_of_compressed_files_workers_and_shard_size(uncased, tmp_path):
    """A directory tree of .gz/.bz2/.xz parts gives the very examples of the plain files, with
    any worker count, cut into shards of exactly --shard-size rows (the last one shorter)."""
    import bz2
    import gzip
    import lzma

    import h5py
    import numpy as np

    lines = require(WIKITEXT2 / "valid.txt").read_text().splitlines(keepends=True)
    titles = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line)]
    cuts = [titles[0], titles[len(titles) // 6], titles[len(titles) // 3], titles[len(titles) // 2]]
    parts = ["".join(lines[a:b]) for a, b in zip(cuts, cuts[1:])]  # whole articles per part
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    packers = [("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)]
    for i, (part, (suffix, pack)) in enumerate(zip(parts, packers)):
        (plain / f"d{i}").mkdir(parents=True)
        (plain / f"d{i}" / "part.txt").write_text(part)
        (packed / f"d{i}").mkdir(parents=True)
        (packed / f"d{i}" / f"part.txt.{suffix}").write_bytes(pack(part.encode()))
    runs = {}
    for name, source, workers in (
        ("plain", plain, 1),
        ("packed1", packed, 1),
        ("packed2", packed, 2),
    ):
        config = PreprocessConfig(
            [source],
            tmp_path / name,
            dupe_factor=1,
            workers=workers,
            shard_size=300,
            input_format="wikitext",
        )
        runs[name] = preprocess(config, uncased)
    base = runs["plain"]
    assert base.documents > 20 and base.train_examples > 600
    directories = [Path(r.directory) for r in runs.values()]
    rows = _shard_rows(directories[0])
    assert [n for _, n in rows[:-1]] == [300] * (len(rows) - 1) and 0 < rows[-1][1] <= 300
    assert sum(n for _, n in rows) == base.train_examples
    for other in directories[1:]:
        assert _shard_rows(other) == rows
        for (name, _), path in zip(rows, sorted(other.glob("*.hdf5"))):
            with h5py.File(directories[0] / name, "r") as a, h5py.File(path, "r") as b:
                for key in a:
                    assert np.array_equal(a[key][...], b[key][...]), (name, key)
                # whole chunks even where a shard began with a block's last few rows
                assert b["input_ids"].chunks == (1024, 128)
                assert b["input_ids"].compression == "gzip" and b["input_ids"].shuffle


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_preprocess_takes_its_workers_along(tmp_path):
    """Pool workers of a killed `preprocess --workers 2` must not live on as orphans."""
    corpus = require(WIKITEXT2 / "train.txt")
    command = [
        sys.executable, "-m", "bertcli", "preprocess", "--input", str(corpus),
        "--vocab-file", str(require(VOCAB_DIR / "bert-base-uncased.txt")),
        "--out", str(tmp_path / "out"), "--workers", "2", "--json",
    ]  # fmt: skip
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = _children(parent.pid)
        assert len(workers) >= 2, "the pool never started"
        time.sleep(1.0)  # let them get busy on blocks
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while [p for p in workers if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "pool workers outlived their parent"
    finally:
        parent.kill()
        for pid in workers:  # orphans of a failed run must not outlive the test either
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (a container's PID 1 may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_jsonl_with_bom_keeps_every_record(invoke, tmp_path):
    """Issue 14: a BOM lost the first record and blamed a missing text field; now every record is
    read, and a truly bad line is reported for what it is."""
    records = [
        json.dumps({"text": f"Record {i} says hello. It has a second sentence too."})
        for i in range(30)
    ]
    body = "\n".join(records[:10] + ["{not json"] + records[10:]) + "\n"
    (tmp_path / "c.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    args = ["--input", tmp_path / "c.jsonl", "--vocab-file", vocab, "--max-seq-length", "32"]
    result = invoke("preprocess", *args, "--out", tmp_path / "o", "--dupe-factor", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"] == 30
    assert "skipped 1 lines that are not a JSON object" in result.stderr


_RSS_SCRIPT = """
import sys
from pathlib import Path
from bertcli.config import PreprocessConfig
from bertcli.preprocess import preprocess
from bertcli.tokenizer import tokenizer_from_vocab
tok = tokenizer_from_vocab(sys.argv[3])
config = PreprocessConfig(inputs=[Path(sys.argv[1])], out=Path(sys.argv[2]), dupe_factor=1, workers=1)
result = preprocess(config, tok)
# VmHWM: this process's own peak (ru_maxrss would include the parent's, kept across exec)
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print(result.split_documents, peak)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_memory_of_a_document_without_blank_lines_does_not_grow_with_it(tmp_path):
    """Before issue 19 one 16 MB document cost 0.94 GB: peak memory followed the document."""
    import random
    import subprocess
    import sys

    words = require(WIKITEXT2 / "valid.txt").read_text().split()
    rng = random.Random(0)
    peaks = {}
    for megabytes in (1, 5):
        path = tmp_path / f"noblank{megabytes}.txt"
        with path.open("w") as handle:
            written = 0
            while written < megabytes << 20:
                line = " ".join(rng.choice(words) for _ in range(20)) + " .\n"
                written += handle.write(line)
        done = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(path), str(tmp_path / f"out{megabytes}"),
             str(require(VOCAB_DIR / "bert-base-uncased.txt"))],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        split, peaks[megabytes] = map(int, done.stdout.split())
        assert split == (1 if megabytes > 1 else 0)
    # 4 more MB of one document: before, ~50 bytes of memory per byte of text (200 MB); now
    # the document is cut into block-sized pieces and the peak stays put
    assert peaks[5] - peaks[1] < 48 << 10, peaks


def test_out_holding_files_bertcli_did_not_write_is_refused(tmp_path):
    from bertcli.errors import UserError

    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))
    corpus = tmp_path / "c.txt"
    corpus.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:20000])
    config = PreprocessConfig([corpus], tmp_path / "o", dupe_factor=1, workers=1)
    final = Path(preprocess(config, tok).directory)
    preprocess(config, tok)  # our own shards: replaced
    (final / "notes.md").write_text("mine")
    with pytest.raises(UserError, match="holds files bertcli did not write"):
        preprocess(config, tok)
    assert (final / "notes.md").read_text() == "mine"
