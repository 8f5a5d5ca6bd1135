"""The token cache shared by runs (issue 22): found like datasets' cache, built once per key even
by concurrent processes, and pruned without taking a store another process reads."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

import bertcli.data.token_store as token_store
from bertcli.data.token_cache import default_cache_dir, token_cache_dir
from bertcli.data.token_store import TokenStore, open_or_build, store_path
from bertcli.tokenizer import tokenizer_from_vocab
from tests.conftest import VOCAB_DIR, WIKITEXT2, require


@pytest.fixture(scope="module")
def tok():
    return tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:30_000])
    return path


def stores(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("tokens-*") if p.is_dir())


def test_cache_dir_is_found_like_datasets_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BERTCLI_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "env"
    assert token_cache_dir(tmp_path / "flag") == tmp_path / "flag" / "tokens"  # --cache-dir wins
    assert token_cache_dir(None) == tmp_path / "env" / "tokens"
    monkeypatch.delenv("BERTCLI_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "bertcli"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "bertcli"


def test_two_runs_on_one_corpus_tokenize_it_once(invoke, corpus, tmp_path, monkeypatch):
    builds = []
    real = token_store.build_store
    monkeypatch.setattr(token_store, "build_store", lambda *a, **k: builds.append(1) or real(*a, **k))
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    for run in ("a", "b"):
        result = invoke(
            "pretrain", "--data-text", "--train-data", corpus, "--vocab-file", vocab,
            "--preset", "tiny", "--max-seq-length", "32", "--batch-size", "4", "--max-steps",
            "1", "--no-nsp", "--out", tmp_path / run, "--device", "cpu",
            "--cache-dir", tmp_path / "cache",
        )  # fmt: skip
        assert result.exit_code == 0, result.output + result.stderr
    assert len(builds) == 1  # the second run, a new --out, read the first one's store
    assert len(stores(tmp_path / "cache" / "tokens")) == 1
    assert not (tmp_path / "a" / "cache").exists()


def _build_in_child(corpus: str, cache: str, log: str, start) -> None:
    """A second process asking for the same key: records each real build it does."""
    tok = tokenizer_from_vocab(VOCAB_DIR / "bert-base-uncased.txt")
    real = token_store.build_store

    def slow_build(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write("build\n")
        time.sleep(1.0)  # long enough for the other process to arrive mid-build
        return real(*args, **kwargs)

    token_store.build_store = slow_build
    start.wait()
    path = store_path([Path(corpus)], tok, "auto", Path(cache))
    store = open_or_build([Path(corpus)], tok, "auto", path)
    with open(log, "a") as handle:
        handle.write(f"{store.directory}:{len(store.tokens)}\n")


def test_concurrent_builds_of_one_key_build_once(corpus, tmp_path):
    ctx = mp.get_context("fork")
    start = ctx.Barrier(2)
    log = tmp_path / "log"
    args = (str(corpus), str(tmp_path / "cache"), str(log), start)
    procs = [ctx.Process(target=_build_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    assert lines.count("build") == 1  # one built, the other waited and opened it
    opened = [line for line in lines if line != "build"]
    assert len(opened) == 2 and opened[0] == opened[1]
    (store,) = stores(tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".locks", store.name]
    TokenStore.open(store)  # complete and consistent


def _hold_store(corpus: str, cache: str, ready, done) -> None:
    tok = tokenizer_from_vocab(VOCAB_DIR / "bert-base-uncased.txt")
    path = store_path([Path(corpus)], tok, "auto", Path(cache))
    store = open_or_build([Path(corpus)], tok, "auto", path)
    ready.set()
    done.wait(120)
    assert len(store.tokens) > 0  # still readable while the other process pruned around it


def test_prune_keeps_a_store_another_run_reads(corpus, tok, tmp_path):
    """The corpus changes while another run reads its old store: the new build keeps it; once
    that run has ended, the next build prunes it (and this process's own old store)."""
    cache = tmp_path / "cache"
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_hold_store, args=(str(corpus), str(cache), ready, done))
    reader.start()
    assert ready.wait(300)
    (old,) = stores(cache)

    text = corpus.read_text()
    corpus.write_text(text + " one more line .\n")
    second = open_or_build([corpus], tok, "auto", store_path([corpus], tok, "auto", cache))
    assert stores(cache) == sorted([old, second.directory])  # in use elsewhere: kept
    done.set()
    reader.join(60)
    assert reader.exitcode == 0

    corpus.write_text(text + " two more lines .\n")
    third = open_or_build([corpus], tok, "auto", store_path([corpus], tok, "auto", cache))
    assert stores(cache) == [third.directory]  # nobody reads the old ones now: pruned
    assert np.asarray(second.tokens).size > 0  # this process's map of a pruned store still reads
    meta = json.loads((third.directory / "meta.json").read_text())
    assert meta["files"] == [str(corpus)]
