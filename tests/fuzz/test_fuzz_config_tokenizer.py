"""config.json, tokenizer.json, vocab.txt and SentencePiece models from strangers."""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bertcli.config import BertConfig
from bertcli.tokenizer import load_tokenizer, tokenizer_from_sentencepiece, tokenizer_from_vocab
from tests.conftest import VOCAB_DIR
from tests.fuzz.conftest import FUZZ, read_within_bounds
from tests.fuzz.strategies import JSON, json_objects, mutated

CONFIG_KEYS = [f.name for f in fields(BertConfig)] + ["model_type", "position_embedding_type"]


def _in_dir(name: str, data: bytes, read) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        read_within_bounds(lambda: read(path))


@FUZZ
@given(config=json_objects(CONFIG_KEYS))
def test_config_json_objects(config):
    _in_dir("config.json", json.dumps(config).encode(), BertConfig.load)


@FUZZ
@given(data=st.binary(max_size=256) | JSON.map(lambda v: json.dumps(v).encode()))
def test_config_json_bytes(data):
    _in_dir("config.json", data, BertConfig.load)


_VOCAB_FILE = VOCAB_DIR / "bert-base-uncased.txt"
# The published vocabulary's head as the seed when ../shared/data is there; a small stand-in
# otherwise, so that a clone without the data still collects and runs the suite.
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_STAND_IN = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_LETTERS, *(f"##{c}" for c in _LETTERS)]
_VOCAB = (
    _VOCAB_FILE.read_bytes()[:4000]
    if _VOCAB_FILE.is_file()
    else ("\n".join([*_STAND_IN, "the", "of", "and"]) + "\n").encode()
)


@FUZZ
@given(data=mutated(_VOCAB) | st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_vocab_txt(data):
    _in_dir("vocab.txt", data, tokenizer_from_vocab)


def _tokenizer_json() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vocab = _VOCAB_FILE if _VOCAB_FILE.is_file() else Path(tmp) / "vocab.txt"
        if not vocab.is_file():
            vocab.write_bytes(_VOCAB)
        tok = tokenizer_from_vocab(vocab)
    text = tok.tokenizer.to_str()
    record = json.loads(text)
    record["model"]["vocab"] = dict(list(record["model"]["vocab"].items())[:200])
    return json.dumps(record).encode()


_TOKENIZER_JSON = _tokenizer_json()


@FUZZ
@given(
    data=mutated(_TOKENIZER_JSON)
    | JSON.map(lambda v: json.dumps(v).encode())
    | json_objects(["model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens"]).map(
        lambda v: json.dumps(v).encode()
    ),
    config=st.none() | JSON.map(lambda v: json.dumps(v).encode()),
)
def test_tokenizer_directory(data, config):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "tokenizer.json").write_bytes(data)
        if config is not None:
            (path / "tokenizer_config.json").write_bytes(config)
        read_within_bounds(lambda: load_tokenizer(path))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _spm_model() -> bytes:
    body = b""
    for piece, kind in (("<unk>", 2), ("<s>", 3), ("▁a", 1), ("b", 1)):
        raw = piece.encode()
        inner = (
            b"\x0a"
            + _varint(len(raw))
            + raw
            + b"\x15"
            + b"\x00\x00\x80\xbf"
            + b"\x18"
            + bytes([kind])
        )
        body += b"\x0a" + _varint(len(inner)) + inner
    return body + b"\x12\x02\x18\x01"


@FUZZ
@given(data=mutated(_spm_model()) | st.binary(max_size=64))
def test_sentencepiece_model(data):
    _in_dir("m.model", data, tokenizer_from_sentencepiece)
