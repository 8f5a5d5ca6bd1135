"""pretrain --init-from CKPT --tokenizer EXTENDED: FVT rows (hand computation), tied weights,
the transformers round trip, evaluate on the grown checkpoint, refusal of other mismatches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bertcli.config import BertConfig
from bertcli.errors import UserError
from bertcli.evaluate import evaluate_checkpoint
from bertcli.hf import WEIGHTS_NAME, load_pretrained, save_pretrained
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import load_tokenizer, tokenizer_from_vocab, write_tokenizer_files
from bertcli.train.runtime import init_runtime
from bertcli.vocab_extension import EXTENSION_FILE, extend_tokenizer
from bertcli.vocab_resize import grow_embeddings, plan_growth
from tests.test_hub import _bertcli, _env, hub  # noqa: F401 - the loopback Hub fixture
from tests.test_vocab_extension import write_corpus, write_vocab

WORDS = {"zebra": 10, "quoll": 8, "dingo": 6, "koala": 4, "hyena": 3}
TEXT = " ".join(w for w, n in WORDS.items() for _ in range(n)) + " the cat sat on the mat .\n"


@pytest.fixture
def base(tmp_path):
    """A random tiny checkpoint over a 3-slot vocabulary, its MLM bias random too."""
    vocab = write_vocab(tmp_path / "vocab.txt", words=["the", "cat", "sat", "on", "mat", "."])
    tok = tokenizer_from_vocab(vocab)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForPreTraining(config)
    with torch.no_grad():
        model.mlm_bias.normal_()
    ckpt = tmp_path / "base"
    save_pretrained(model, ckpt)
    write_tokenizer_files(tok, ckpt)
    return ckpt


@pytest.fixture
def extended(base, tmp_path):
    corpus = write_corpus(tmp_path / "domain.txt", WORDS)
    extend_tokenizer(base, [corpus], 5, tmp_path / "ext")  # 3 slots, 2 appended
    return tmp_path / "ext"


def test_new_rows_are_the_mean_of_their_base_rows(base, extended):
    old = load_pretrained(base)
    tok = load_tokenizer(extended)
    growth = plan_growth(tok, base, old.config.vocab_size)
    assert growth.source == "extension.json"
    assert (growth.old_size, growth.new_size, growth.filled, growth.appended) == (66, 68, 3, 2)
    grown = grow_embeddings(old, growth)
    record = json.loads((extended / EXTENSION_FILE).read_text())
    vocab = {t: i for i, t in enumerate((base / "vocab.txt").read_text().splitlines())}
    w_old, b_old = old.bert.embeddings.word_embeddings.weight.detach(), old.mlm_bias.detach()
    w_new, b_new = grown.bert.embeddings.word_embeddings.weight.detach(), grown.mlm_bias.detach()
    assert w_new.shape == (68, 32) and b_new.shape == (68,)
    for piece in record["pieces"]:
        ids = [vocab[t] for t in piece["base_tokens"]]  # e.g. z ##e ##b ##r ##a
        assert len(ids) == 5
        by_hand = sum(w_old[i] for i in ids) / len(ids)
        torch.testing.assert_close(w_new[piece["id"]], by_hand, atol=1e-6, rtol=0)
        assert abs(float(b_new[piece["id"]]) - sum(float(b_old[i]) for i in ids) / 5) < 1e-6
    untouched = [i for i in range(66) if i not in growth.rows]
    assert torch.equal(w_new[untouched], w_old[untouched])
    assert torch.equal(b_new[untouched], b_old[untouched])
    # every other tensor is the checkpoint's
    for name, tensor in old.state_dict().items():
        if name not in ("bert.embeddings.word_embeddings.weight", "mlm_bias"):
            assert torch.equal(grown.state_dict()[name], tensor), name


def test_tied_and_transformers_round_trip(base, extended, tmp_path):
    transformers = pytest.importorskip("transformers")
    growth = plan_growth(load_tokenizer(extended), base, 66)
    grown = grow_embeddings(load_pretrained(base), growth).eval()
    assert grown.decoder_weight is grown.bert.embeddings.word_embeddings.weight
    save_pretrained(grown, tmp_path / "grown")
    again = load_pretrained(tmp_path / "grown")
    assert (
        again.decoder_weight.data_ptr() == again.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "grown").eval()
    assert theirs.config.vocab_size == 68
    decoder = theirs.cls.predictions.decoder.weight
    assert decoder.data_ptr() == theirs.bert.embeddings.word_embeddings.weight.data_ptr()
    ids = torch.tensor([[5, 66, 67, 1, 6, 40, 7], [5, 1, 67, 6, 0, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    with torch.no_grad():
        ours = grown(ids, types, mask).mlm_logits
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask).prediction_logits
    assert ours.shape[-1] == 68
    assert (ours - ref)[mask.bool()].abs().max() < 1e-4


def test_pretrain_grows_the_checkpoint_and_evaluate_accepts_it(base, extended, tmp_path, invoke):
    text = tmp_path / "train.txt"
    text.write_text(TEXT * 40)
    out = tmp_path / "run"
    result = invoke(
        "pretrain", "--data-text", "--train-data", str(text), "--init-from", str(base),
        "--tokenizer", str(extended), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
        "--max-seq-length", "32", "--device", "cpu", "--no-nsp",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [line] = [ln for ln in result.output.splitlines() if "(FVT)" in ln]
    assert "66 -> 68 tokens, 3 rows of unused slots re-used and 2 appended" in line
    ckpt = out / "checkpoints" / "step_00000001"
    assert json.loads((ckpt / "config.json").read_text())["vocab_size"] == 68
    assert (ckpt / "vocab.txt").read_text() == (extended / "vocab.txt").read_text()
    from safetensors import safe_open

    with safe_open(str(ckpt / WEIGHTS_NAME), "pt") as f:
        assert f.get_slice("bert.embeddings.word_embeddings.weight").get_shape() == [68, 32]
        assert "cls.predictions.decoder.weight" not in f.keys()  # tied: not stored
    metrics = evaluate_checkpoint(
        ckpt, init_runtime("cpu", "fp32"), data_text=[text], max_seq_length=32, max_batches=2
    )
    assert metrics["num_masked_tokens"] > 0 and metrics["mlm_loss"] > 0
    # init from the grown checkpoint with the same tokenizer: nothing left to grow
    assert plan_growth(load_tokenizer(extended), ckpt, 68) is None


def test_vocabulary_comparison_without_extension_json(base, extended, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(extended, bare)
    (bare / EXTENSION_FILE).unlink()
    with_record = plan_growth(load_tokenizer(extended), base, 66)
    compared = plan_growth(load_tokenizer(bare), base, 66)
    assert compared.source == "vocabulary comparison"
    assert compared.rows == with_record.rows


def test_other_mismatches_are_refused(base, extended, tmp_path, invoke):
    # an extension of another vocabulary of the same size: named by its sha256
    other_vocab = write_vocab(tmp_path / "other.txt", words=["the", "cat", "sat", "on", "rug", "."])
    other = tmp_path / "other-ext"
    extend_tokenizer(other_vocab, [write_corpus(tmp_path / "d.txt", WORDS)], 5, other)
    with pytest.raises(UserError, match="extends the vocabulary .* but .* has the vocabulary"):
        plan_growth(load_tokenizer(other), base, 66)

    # extension.json that no longer matches its vocab.txt (a base line edited by hand)
    edited = tmp_path / "edited"
    shutil.copytree(extended, edited)
    spec = json.loads((edited / "tokenizer.json").read_text())
    spec["model"]["vocab"]["dog"] = spec["model"]["vocab"].pop("cat")
    (edited / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="does not match its extension.json"):
        plan_growth(load_tokenizer(edited), base, 66)

    # an unrelated vocabulary (no extension.json): today's size check, unchanged
    unrelated = write_vocab(tmp_path / "unrelated.txt", words=["a1", "b2"], slots=0)
    assert plan_growth(tokenizer_from_vocab(unrelated), base, 66) is None
    text = tmp_path / "train.txt"
    text.write_text(TEXT * 40)
    result = invoke(
        "pretrain", "--data-text", "--train-data", str(text), "--init-from", str(base),
        "--vocab-file", str(unrelated), "--out", str(tmp_path / "run"), "--max-steps", "1",
        "--device", "cpu", "--no-nsp", "--max-seq-length", "32",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "tokenizer has 59 tokens but the model config has vocab_size 66" in result.stderr


def test_published_name_extended_then_grown(hub, tmp_path):  # noqa: F811 - the fixture
    """--extend bert-base-uncased, then --init-from the name (the loopback Hub serves it)."""
    env = _env(tmp_path, hub)
    corpus = write_corpus(tmp_path / "domain.txt", {"glorptex": 10, "snarfwib": 8})  # not in it
    ext = tmp_path / "ext"
    args = ["--train-data", corpus, "--add-tokens", "2", "--out", ext]
    result = _bertcli(env, "build-tokenizer", "--extend", "bert-base-uncased", *args)
    assert result.returncode == 0, result.stderr
    record = json.loads((ext / EXTENSION_FILE).read_text())
    assert record["base"]["source"] == "bert-base-uncased"
    assert record["base"]["vocab_sha256"].startswith("07eced375cec144d")  # the published file
    pieces = sorted((p["piece"], p["id"], p["slot"]) for p in record["pieces"])
    assert pieces[0][0] == "glorptex" and pieces[1][0] == "snarfwib"
    assert {(i, slot) for _, i, slot in pieces} == {(1, "[unused0]"), (2, "[unused1]")}
    text = tmp_path / "train.txt"
    text.write_text(TEXT * 40)
    result = _bertcli(
        env, "pretrain", "--data-text", "--train-data", text, "--init-from", "bert-base-uncased",
        "--tokenizer", ext, "--max-steps", "1", "--batch-size", "2", "--max-seq-length", "32",
        "--device", "cpu", "--no-nsp", "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "30522 -> 30522 tokens, 2 rows of unused slots re-used and 0 appended" in (
        result.stdout + result.stderr
    )


def test_unreadable_extension_json_is_refused(base, extended):
    (extended / EXTENSION_FILE).write_text('{"base": {}, "pieces": 3}')
    with pytest.raises(UserError, match="not a readable extension.json"):
        plan_growth(load_tokenizer(extended), base, 66)
