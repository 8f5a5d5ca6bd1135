"""build-tokenizer --extend: stable base ids, slots then appended, ## pieces, the ranking by
tokens saved (hand-checked on tiny corpora), the slow BertTokenizer as reference, one-line errors.
"""

from __future__ import annotations

import json

import pytest

from bertcli.errors import UserError
from bertcli.tokenizer import load_tokenizer, save_tokenizer, tokenizer_from_vocab, train_tokenizer
from bertcli.vocab_extension import (
    EXTENSION_FILE,
    extend_tokenizer,
    vocab_sha256,
    vocab_tokens,
    wordpiece,
)
from tests.conftest import SHARED, VOCAB_DIR, require
from tests.test_tokenizer import reference_ids, slow_reference

WNUT = SHARED / "downstream" / "wnut17"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_vocab(path, words=(), slots=3):
    """A small BERT-style vocab.txt: [PAD], slots, the specials, letters and ## letters, words."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(slots)]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(LETTERS) + [f"##{c}" for c in LETTERS] + list(words)
    path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    return path


def write_corpus(path, counts: dict[str, int]):
    path.write_text("".join(f"{w}\n" * n for w, n in counts.items()), encoding="utf-8")
    return path


def wnut_text(split: str, path):
    """WNUT-17 sentences (tokens joined by spaces), one per line."""
    lines, words = [], []
    for line in require(WNUT / f"{split}.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.append(line.split("\t")[0])
        elif words:
            lines.append(" ".join(words))
            words = []
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_greedy_wordpiece_by_hand():
    vocab = {"walk", "##ing", "##i", "##n", "##g", "w", "##a", "##l", "##k"}
    assert wordpiece("walking", vocab, 4) == ["walk", "##ing"]
    assert wordpiece("ing", vocab, 4, continuation=True) == ["##ing"]
    assert wordpiece("walkx", vocab, 4) is None  # no piece for x: the word is [UNK]


def test_best_piece_is_the_one_that_saves_most_tokens(tmp_path):
    # zebra x10: z ##e ##b ##r ##a = 5 tokens under the base, 1 with "zebra": saves 40, more
    # than any other piece of the corpus (each other word saves at most 2 tokens x 2)
    base = write_vocab(tmp_path / "vocab.txt")
    corpus = write_corpus(tmp_path / "c.txt", {"zebra": 10, "cat": 2, "dog": 2})
    ext = extend_tokenizer(base, [corpus], 1, tmp_path / "out")
    [piece] = ext.pieces
    assert (piece.piece, piece.saving, piece.count) == ("zebra", 40, 10)
    assert piece.base_tokens == ["z", "##e", "##b", "##r", "##a"]
    assert (piece.id, piece.slot) == (1, "[unused0]")  # the first slot


def test_continuation_piece_shared_by_many_words_wins(tmp_path):
    # "##ing" saves 2 tokens in each of 4 words seen twice (16); a whole word like "walking"
    # saves only 3 x 2 = 6 (walk ##i ##n ##g -> walking): the ## piece comes first
    base = write_vocab(tmp_path / "vocab.txt", words=["walk", "talk", "sing", "ring"])
    words = {"walking": 2, "talking": 2, "singing": 2, "ringing": 2}
    ext = extend_tokenizer(base, [write_corpus(tmp_path / "c.txt", words)], 2, tmp_path / "out")
    first = ext.pieces[0]
    assert (first.piece, first.saving, first.base_tokens) == ("##ing", 16, ["##i", "##n", "##g"])
    tok = load_tokenizer(tmp_path / "out")
    assert tok.tokenizer.encode("walking", add_special_tokens=False).tokens == ["walk", "##ing"]


def test_greedy_reevaluates_against_pieces_already_taken(tmp_path):
    # against the base, "zebras" (x9) saves 9 * 5 = 45 and "zebra" (x10) 40 + 9 * 4 = 76 (it
    # also shortens zebras to zebra ##s): "zebra" first. Re-evaluated after it, "zebras" saves
    # only 9 * 1 = 9, which is what it is recorded with; a one-shot ranking would say 45.
    base = write_vocab(tmp_path / "vocab.txt")
    corpus = write_corpus(tmp_path / "c.txt", {"zebra": 10, "zebras": 9})
    ext = extend_tokenizer(base, [corpus], 2, tmp_path / "out")
    assert [(p.piece, p.saving) for p in ext.pieces] == [("zebra", 76), ("zebras", 9)]
    assert [p.count for p in ext.pieces] == [10, 9]
    record = json.loads((tmp_path / "out" / EXTENSION_FILE).read_text())
    assert record["corpus"]["base_tokens"] == 10 * 5 + 9 * 6
    assert record["corpus"]["extended_tokens"] == 19


def test_slots_first_then_appended_and_every_other_line_stays(tmp_path):
    base = write_vocab(tmp_path / "vocab.txt", slots=3)
    # five-letter words, 4 tokens saved per occurrence: savings 200, 160, 120, 80, 40
    names = ["zebra", "quoll", "dingo", "koala", "hyena"]
    words = {w: 50 - 10 * i for i, w in enumerate(names)}
    ext = extend_tokenizer(base, [write_corpus(tmp_path / "c.txt", words)], 5, tmp_path / "out")
    old = base.read_text().splitlines()
    new = (tmp_path / "out" / "vocab.txt").read_text().splitlines()
    assert len(new) == len(old) + 2
    assert [(p.id, p.slot) for p in ext.pieces] == [
        (1, "[unused0]"),
        (2, "[unused1]"),
        (3, "[unused2]"),
        (len(old), None),
        (len(old) + 1, None),
    ]
    changed = [i for i, (a, b) in enumerate(zip(old, new)) if a != b]
    assert changed == [1, 2, 3]
    for p in ext.pieces:
        assert new[p.id] == p.piece
    record = json.loads((tmp_path / "out" / EXTENSION_FILE).read_text())
    assert record["base"]["vocab_sha256"] == vocab_sha256(old)
    assert record["base"]["vocab_size"] == len(old)
    assert (record["slots_filled"], record["appended"]) == (3, 2)
    assert [p["piece"] for p in record["pieces"]] == names
    assert [p["saving"] for p in record["pieces"]] == [200, 160, 120, 80, 40]
    assert [p["slot"] for p in record["pieces"]] == [
        "[unused0]",
        "[unused1]",
        "[unused2]",
        None,
        None,
    ]


@pytest.fixture(scope="module")
def wnut_extension(tmp_path_factory):
    root = tmp_path_factory.mktemp("wnut")
    wnut_text("train", root / "train.txt")
    test_lines = wnut_text("test", root / "test.txt")
    vocab = require(VOCAB_DIR / "bert-base-uncased.txt")
    ext = extend_tokenizer(vocab, [root / "train.txt"], 1000, root / "ext")
    return vocab, ext, root / "ext", test_lines


def test_bert_base_uncased_fills_its_994_slots_then_appends(wnut_extension):
    vocab, ext, out, _ = wnut_extension
    old = vocab.read_text(encoding="utf-8").splitlines()
    new = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    slots = [i for i, t in enumerate(old) if t.startswith("[unused")]
    assert len(slots) == 994 and len(new) == len(old) + 6
    assert [p.id for p in ext.pieces] == slots + list(range(30522, 30528))
    kept = set(range(len(old))) - set(slots)
    assert all(old[i] == new[i] for i in kept)
    assert any(p.piece.startswith("##") for p in ext.pieces)  # continuations are added too
    assert all(p.saving > 0 and p.count > 0 for p in ext.pieces)
    tok = load_tokenizer(out)
    assert tok.vocab_size == 30528
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"] for t in spec["added_tokens"]}
    assert not added & {p.piece for p in ext.pieces}  # real WordPiece entries, not added tokens


def test_slow_bert_tokenizer_on_new_vocab_equals_our_tokenizer_json(wnut_extension):
    transformers = pytest.importorskip("transformers")
    _, ext, out, lines = wnut_extension
    expected = reference_ids(slow_reference(out / "vocab.txt", True), lines)
    ours = load_tokenizer(out).encode_batch(lines)
    assert ours == expected
    new_ids = {p.id for p in ext.pieces}
    assert sum(1 for ids in ours for i in ids if i in new_ids) > 500  # the new pieces are used
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert [auto.encode(line, add_special_tokens=False) for line in lines[:200]] == ours[:200]


def test_fertility_drops_on_held_out_text(wnut_extension):
    vocab, _, out, lines = wnut_extension
    before = sum(map(len, load_tokenizer(vocab).encode_batch(lines)))
    after = sum(map(len, load_tokenizer(out).encode_batch(lines)))
    assert after < 0.995 * before  # measured: 36,852 -> 36,333 tokens (-1.4%)


def test_base_forms_vocab_dir_checkpoint_and_run_dir(tmp_path):
    base_file = write_vocab(tmp_path / "vocab.txt")
    corpus = write_corpus(tmp_path / "c.txt", {"zebra": 10, "cat": 2})
    as_dir = tmp_path / "tok"
    save_tokenizer(tokenizer_from_vocab(base_file), as_dir)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001"
    save_tokenizer(tokenizer_from_vocab(base_file), ckpt)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "trainer_state.pt").write_bytes(b"")
    sha = vocab_sha256(vocab_tokens(load_tokenizer(base_file)))
    for i, base in enumerate([base_file, as_dir, ckpt, tmp_path / "run"]):
        ext = extend_tokenizer(base, [corpus], 1, tmp_path / f"out{i}")
        assert ext.pieces[0].piece == "zebra"
        assert ext.base["vocab_sha256"] == sha


def _one_line(result):
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    return result.stderr


def test_bad_input_is_one_line(invoke, tmp_path):
    base = write_vocab(tmp_path / "vocab.txt")
    corpus = write_corpus(tmp_path / "c.txt", {"zebra": 10, "cat": 3})

    def extend(*args, out="out"):
        return invoke("build-tokenizer", "--extend", str(base), "--out", str(tmp_path / out), *args)

    line = _one_line(extend("--train-data", str(corpus), "--add-tokens", "500"))
    assert "the corpus offers only" in line and "--add-tokens 500" in line
    offered = int(line.split("offers only ")[1].split()[0])
    assert 0 < offered < 500
    assert extend("--train-data", str(corpus), "--add-tokens", str(offered)).exit_code == 0

    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    assert "is empty" in _one_line(
        extend("--train-data", str(blank), "--add-tokens", "1", out="o2")
    )
    unknowns = tmp_path / "unk.txt"
    unknowns.write_text("[UNK] [UNK]\n")  # WikiText's markers are not words: nothing to count
    line = _one_line(extend("--train-data", str(unknowns), "--add-tokens", "1", out="o2"))
    assert "the corpus has no text" in line
    assert "--add-tokens" in _one_line(extend("--train-data", str(corpus), out="o3"))

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    line = _one_line(extend("--train-data", str(corpus), "--add-tokens", "1", out="busy"))
    assert "non-empty directory" in line and (busy / "notes.txt").read_text() == "mine"

    spm = tmp_path / "spm"
    train_tokenizer("sentencepiece", [corpus], 40, spm, exact=False)
    result = invoke("build-tokenizer", "--extend", str(spm), "--train-data", str(corpus),
                    "--add-tokens", "1", "--out", str(tmp_path / "o4"))  # fmt: skip
    assert "not WordPiece" in _one_line(result)


def test_api_refuses_nonpositive_add_tokens(tmp_path):
    with pytest.raises(UserError, match="--add-tokens must be >= 1"):
        extend_tokenizer(write_vocab(tmp_path / "v.txt"), [tmp_path / "c.txt"], 0, tmp_path / "o")
