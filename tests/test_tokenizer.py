"""Tokenizers: encodings equal the slow (pure-Python) BertTokenizer; trained vocabularies are exact."""

from __future__ import annotations

import json

import pytest

from bertcli.errors import UserError
from bertcli.tokenizer import (
    SPECIAL_TOKENS,
    infer_lowercase,
    load_tokenizer,
    read_vocab_file,
    save_tokenizer,
    tokenizer_from_sentencepiece,
    tokenizer_from_vocab,
    train_tokenizer,
)
from tests.conftest import VOCAB_DIR, WIKITEXT2, ZH_DIR, require


def slow_reference(vocab_file, lowercase):
    """The pure-Python BERT tokenizer (transformers >= 5 moved it to a legacy module)."""
    pytest.importorskip("transformers")  # only the tests that compare with it skip without it
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:  # transformers 4.x
        from transformers import BertTokenizer as Slow
    ref = Slow(str(vocab_file), do_lower_case=lowercase)
    assert not ref.is_fast  # the pure-Python reference, not the Rust tokenizer we wrap
    return ref


def reference_ids(ref, lines):
    return [ref.convert_tokens_to_ids(ref.tokenize(line)) for line in lines]


@pytest.fixture
def small_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    lines = [line for line in require(WIKITEXT2 / "valid.txt").read_text().splitlines()][:1500]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, lowercase", [("uncased", True), ("cased", False)])
def test_wordpiece_equals_slow_bert_tokenizer_on_wikitext2_valid(name, lowercase):
    vocab = require(VOCAB_DIR / f"bert-base-{name}.txt")
    lines = [ln.strip() for ln in (WIKITEXT2 / "valid.txt").read_text().splitlines() if ln.strip()]
    ours = tokenizer_from_vocab(vocab)
    assert ours.lowercase is lowercase  # inferred from the vocabulary
    expected = reference_ids(slow_reference(vocab, lowercase), lines)
    got = ours.encode_batch(lines)
    mismatches = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatches, f"{len(mismatches)} lines differ, first: {lines[mismatches[0]][:80]}"


@pytest.mark.slow
def test_chinese_equals_slow_bert_tokenizer_on_wiki_sample():
    vocab = require(VOCAB_DIR / "bert-base-chinese.txt")
    lines = []
    for path in sorted(require(ZH_DIR).glob("*.jsonl")):
        for record in path.read_text(encoding="utf-8").splitlines():
            lines += [p for p in json.loads(record)["text"].split("\n") if p.strip()]
    ours = tokenizer_from_vocab(vocab)
    assert ours.lowercase is True
    expected = reference_ids(slow_reference(vocab, True), lines)
    got = ours.encode_batch(lines)
    mismatches = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    assert not mismatches, f"{len(mismatches)} of {len(lines)} lines differ"


def test_published_vocab_ids_match_lines(tmp_path):
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    tok = tokenizer_from_vocab(vocab)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    save_tokenizer(tok, tmp_path / "tok")
    assert (tmp_path / "tok" / "vocab.txt").read_bytes() == vocab.read_bytes()
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode_batch(["the quick fox"]) == tok.encode_batch(["the quick fox"])
    assert again.tokenizer.token_to_id("the") == 1996


def test_pair_template_and_autotokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")  # the reference
    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-cased.txt"))
    save_tokenizer(tok, tmp_path / "tok")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    enc = auto("Hello there", "General Kenobi")
    ref = slow_reference(VOCAB_DIR / "bert-base-cased.txt", False)
    a = ref.convert_tokens_to_ids(ref.tokenize("Hello there"))
    b = ref.convert_tokens_to_ids(ref.tokenize("General Kenobi"))
    assert enc["input_ids"] == [101] + a + [102] + b + [102]
    assert enc["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_trained_vocab_has_exact_size_and_specials(tmp_path, small_corpus, kind):
    transformers = pytest.importorskip("transformers")  # the reference
    tok, stats = train_tokenizer(kind, [small_corpus], 2000, tmp_path / "tok")
    assert tok.vocab_size == 2000
    assert stats.sentences > 0
    files = {p.name for p in (tmp_path / "tok").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files
    if kind == "wordpiece":
        lines = (tmp_path / "tok" / "vocab.txt").read_text().splitlines()
        assert len(lines) == 2000 and lines[:5] == list(SPECIAL_TOKENS)
        assert any(t.startswith("##") for t in lines)
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.kind == kind and loaded.vocab_size == 2000
    enc = loaded.tokenizer.encode("the first part", "the second")
    assert enc.ids[0] == loaded.cls_id and enc.ids[-1] == loaded.sep_id
    assert enc.ids.count(loaded.sep_id) == 2
    first_sep = enc.ids.index(loaded.sep_id)
    assert set(enc.type_ids[: first_sep + 1]) == {0} and set(enc.type_ids[first_sep + 1 :]) == {1}
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert auto("the first part", "the second")["input_ids"] == enc.ids


def test_wikitext_unk_is_the_special_token(tmp_path, small_corpus):
    tok, _ = train_tokenizer("wordpiece", [small_corpus], 1500, tmp_path / "tok")
    assert tok.tokenizer.token_to_id("unk") is None  # `<unk>` was not learned as a word
    assert tok.tokenizer.encode("a [UNK] b", add_special_tokens=False).ids[1] == tok.unk_id


def test_chinese_characters_are_split(tmp_path):
    corpus = tmp_path / "zh.jsonl"
    records = require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl").read_text().splitlines()[:8]
    corpus.write_text("\n".join(records) + "\n")
    tok, _ = train_tokenizer("wordpiece", [corpus], 2000, tmp_path / "tok", min_frequency=1)
    pieces = tok.tokenizer.encode("数学是一门学科", add_special_tokens=False).tokens
    assert pieces == list("数学是一门学科")


def test_sample_size_and_invalid_utf8_counted(tmp_path, small_corpus):
    data = small_corpus.read_bytes() + b"bad \xff\xfe bytes here .\n"
    small_corpus.write_bytes(data)
    tok, stats = train_tokenizer(
        "wordpiece", [small_corpus], 800, tmp_path / "tok", sample_size=500
    )
    assert stats.invalid_utf8_lines == 1
    assert tok.vocab_size == 800


def test_infer_lowercase():
    assert infer_lowercase(read_vocab_file(require(VOCAB_DIR / "bert-base-uncased.txt")))
    assert not infer_lowercase(read_vocab_file(VOCAB_DIR / "bert-base-cased.txt"))


def _write_spm_model(path, pieces, model_type=1):
    """A minimal SentencePiece ModelProto, written field by field (no protobuf library)."""
    import struct

    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def field(num, wire, payload):
        key = varint(num << 3 | wire)
        if wire == 2:
            return key + varint(len(payload)) + payload
        return key + payload

    body = b""
    for piece, score, kind in pieces:
        msg = field(1, 2, piece.encode()) + field(2, 5, struct.pack("<f", score))
        msg += field(3, 0, varint(kind))
        body += field(1, 2, msg)
    body += field(2, 2, field(3, 0, varint(model_type)))
    path.write_bytes(body)


def test_import_handwritten_sentencepiece_model(tmp_path):
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("▁", -1.0, 1)]
    pieces += [("▁hello", -2.0, 1), ("▁world", -2.5, 1)] + [(c, -5.0, 1) for c in "helowrd"]
    _write_spm_model(tmp_path / "t.model", pieces)
    tok = tokenizer_from_sentencepiece(tmp_path / "t.model")
    assert tok.unk_id == 0 and tok.tokenizer.id_to_token(0) == "[UNK]"
    assert tok.encode_batch(["hello world"]) == [[4, 5]]
    assert tok.vocab_size == len(pieces) + 4  # [PAD] [CLS] [SEP] [MASK] appended
    _write_spm_model(tmp_path / "bpe.model", pieces, model_type=2)
    with pytest.raises(UserError, match="BPE"):
        tokenizer_from_sentencepiece(tmp_path / "bpe.model")


def test_import_real_sentencepiece_model_matches_sentencepiece(tmp_path, small_corpus):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        input=str(small_corpus),
        model_prefix=str(tmp_path / "m"),
        vocab_size=1000,
        model_type="unigram",
        normalization_rule_name="identity",
        minloglevel=2,
    )
    ours = tokenizer_from_sentencepiece(tmp_path / "m.model")
    reference = spm.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    lines = [ln.strip() for ln in small_corpus.read_text().splitlines() if ln.strip()][:300]
    got = ours.encode_batch(lines)
    expected = [reference.encode(line) for line in lines]
    agree = sum(a == b for a, b in zip(got, expected)) / len(lines)
    assert agree > 0.97, agree


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"[PAD]\n[UNK]\nhello\n", "lacks the special tokens [CLS] [SEP] [MASK]"),
        (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nx\nx\n", "repeats 'x'"),
        (b"\xff\xfe[PAD]\n", "not valid UTF-8"),
        (b"", "empty"),
    ],
)
def test_bad_vocab_files(tmp_path, content, needle):
    (tmp_path / "vocab.txt").write_bytes(content)
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        tokenizer_from_vocab(tmp_path / "vocab.txt")


def test_bad_training_inputs_leave_no_directory(tmp_path, small_corpus):
    with pytest.raises(UserError, match="too small"):
        train_tokenizer("wordpiece", [small_corpus], 30, tmp_path / "tok")
    with pytest.raises(UserError, match="only"):
        train_tokenizer("wordpiece", [small_corpus], 500_000, tmp_path / "tok")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        train_tokenizer("wordpiece", [tmp_path / "empty.txt"], 100, tmp_path / "tok")
    with pytest.raises(UserError, match="no such file"):
        train_tokenizer("wordpiece", [tmp_path / "missing.txt"], 100, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tok")]
    (tmp_path / "garbage.model").write_bytes(b"\xff" * 20)
    with pytest.raises(UserError, match="not a readable SentencePiece model"):
        tokenizer_from_sentencepiece(tmp_path / "garbage.model")


# below the alphabet the trainer refuses outright; one below the minimum it overshoots
@pytest.mark.parametrize("language, too_small", [("en", 60), ("zh", 20)])
def test_unigram_too_small_states_the_true_minimum(tmp_path, small_corpus, language, too_small):
    """The line names a size that works exactly, and the size below it fails the same way."""
    import re

    corpus = tmp_path / ("zh.jsonl" if language == "zh" else "en.txt")
    source = require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl") if language == "zh" else None
    lines = (source or small_corpus).read_text(encoding="utf-8").splitlines(True)
    corpus.write_text("".join(lines[:6] if source else lines[:300]), encoding="utf-8")
    with pytest.raises(UserError, match="need --vocab-size") as info:
        train_tokenizer("sentencepiece", [corpus], too_small, tmp_path / "tok")
    assert str(info.value).startswith(f"--vocab-size {too_small} is too small")
    minimum = int(re.search(r"need --vocab-size (\d+) or more", str(info.value)).group(1))
    chars = int(re.search(r"its (\d+) distinct characters", str(info.value)).group(1))
    with pytest.raises(UserError, match=f"need --vocab-size {minimum} or more"):  # overshoot
        train_tokenizer("sentencepiece", [corpus], minimum - 1, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()
    tok, _ = train_tokenizer("sentencepiece", [corpus], minimum, tmp_path / "tok")
    assert tok.vocab_size == minimum
    # independent count: a Unigram vocabulary holds every character as a piece of its own
    pieces = tok.tokenizer.get_vocab()
    singles = [p for p in pieces if len(p) == 1]
    assert len(singles) == chars and minimum == chars + len(SPECIAL_TOKENS) + 1


@pytest.mark.parametrize("data", [b"abc", b"\x11", b"\x0a\x05\x15\x00", b"\xff" * 12])
def test_truncated_sentencepiece_model_is_one_line(tmp_path, invoke, data):
    path = tmp_path / "tiny.model"
    path.write_bytes(data)  # 3 bytes: a field tag promising a double that is not there
    with pytest.raises(UserError, match="--sentencepiece-model"):
        tokenizer_from_sentencepiece(path)
    result = invoke("build-tokenizer", "--sentencepiece-model", path, "--out", tmp_path / "t")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("error: --sentencepiece-model")


def _padded_tokenizer_dir(tmp_path):
    """A tokenizer directory as sentence-transformers saves one: every text padded and cut to 16
    in tokenizer.json (all-MiniLM-L6-v2 ships Fixed 128 padding and truncation at 128)."""
    tok = tokenizer_from_vocab(require(VOCAB_DIR / "bert-base-uncased.txt"))
    save_tokenizer(tok, tmp_path / "clean")
    tok.tokenizer.enable_padding(length=16, pad_id=tok.pad_id, pad_token="[PAD]")
    tok.tokenizer.enable_truncation(16)
    save_tokenizer(tok, tmp_path / "padded")
    stored = json.loads((tmp_path / "padded" / "tokenizer.json").read_text())
    assert stored["padding"] and stored["truncation"]  # the hazard is really in the file
    return tmp_path / "clean", tmp_path / "padded"


def test_loaded_tokenizer_ignores_fixed_padding_and_truncation(tmp_path):
    """bertcli encodes whole lines: a tokenizer.json's padding/truncation must not cut or pad."""
    clean, padded = _padded_tokenizer_dir(tmp_path)
    texts = ["hello world", "the quick brown fox jumps over the lazy dog " * 10]
    want = load_tokenizer(clean).encode_batch(texts)
    got = load_tokenizer(padded).encode_batch(texts)
    assert got == want
    assert len(got[0]) == 2 and len(got[1]) == 90  # neither padded to 16 nor cut at it


def test_preprocess_with_a_padding_tokenizer_makes_the_same_shards(invoke, tmp_path):
    """The domain workflow's input: a published sentence-transformers tokenizer directory."""
    clean, padded = _padded_tokenizer_dir(tmp_path)
    corpus = tmp_path / "c.txt"
    corpus.write_text(require(WIKITEXT2 / "valid.txt").read_text()[:60_000])
    stats = {}
    for name, tok in (("clean", clean), ("padded", padded)):
        result = invoke(
            "preprocess", "--input", corpus, "--tokenizer", tok, "--out", tmp_path / f"o-{name}",
            "--dupe-factor", "1", "--max-seq-length", "64", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        stats[name] = json.loads(result.stdout)
    for key in ("train_examples", "sentences", "tokens", "long_sentences"):
        assert stats["padded"][key] == stats["clean"][key], key
    assert stats["clean"]["tokens"] > 10_000 and stats["clean"]["long_sentences"] < 50
