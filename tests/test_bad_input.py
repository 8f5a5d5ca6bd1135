"""The bad-input matrix: every command against its worst inputs.

Each case must exit with code 2, print exactly one line on stderr that names the problem, show
no traceback, and leave nothing at the output path that looks complete.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from bertcli.config import BertConfig
from bertcli.data.shards import KEYS, ShardArrays, write_shard
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import train_tokenizer
from tests.conftest import WIKITEXT2, require


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (root / "corpus.txt").write_text(text[:80_000])
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n\n   \n")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "cut.txt.gz").write_bytes(gzip.compress(text.encode())[:9000])  # ends mid-stream
    (root / "novocab.txt").write_text("hello\nworld\n")
    (root / "plain_dir").mkdir()
    (root / "plain_dir" / "notes.txt").write_text("not a checkpoint\n")
    tok, _ = train_tokenizer("wordpiece", [root / "corpus.txt"], 1000, root / "tok")
    cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertForPreTraining(BertConfig(vocab_size=1000, **cfg)).save_pretrained(root / "ckpt")
    BertForPreTraining(BertConfig(vocab_size=77, **cfg)).save_pretrained(root / "ckpt77")
    BertForPreTraining(BertConfig(vocab_size=1000, **cfg)).save_pretrained(root / "corrupt")
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    (root / "config_only").mkdir()
    BertConfig(vocab_size=1000, **cfg).save(root / "config_only" / "config.json")
    (root / "shard_ok").mkdir()
    write_shard(root / "shard_ok" / "training_00000.hdf5", _valid_shard_arrays())
    for name, (key, where, value, attrs) in BAD_SHARDS.items():
        arrays = _valid_shard_arrays()
        getattr(arrays, key)[where] = value
        (root / name).mkdir()
        write_shard(root / name / "training_00000.hdf5", arrays, attrs=attrs)
    return root


def _valid_shard_arrays(n: int = 12, seq: int = 16, pred: int = 3) -> ShardArrays:
    """A shard any 1000-token model can train on: ids < 1000, positions inside the sequence."""
    gen = np.random.default_rng(0)
    return ShardArrays(
        input_ids=gen.integers(5, 1000, (n, seq)).astype(np.int32),
        input_mask=np.ones((n, seq), np.int8),
        segment_ids=np.repeat([[0] * 8 + [1] * 8], n, axis=0).astype(np.int8),
        masked_lm_positions=np.tile([1, 4, 9], (n, 1)).astype(np.int32),
        masked_lm_ids=gen.integers(5, 1000, (n, pred)).astype(np.int32),
        next_sentence_labels=gen.integers(0, 2, n).astype(np.int8),
    )


# shard directory -> (dataset, index, bad value, header attributes)
BAD_SHARDS = {
    "shard_vocab_header": ("input_ids", (0, 0), 5, {"vocab_size": 30522}),
    "shard_id_large": ("input_ids", (3, 5), 1500, None),
    "shard_label_large": ("masked_lm_ids", (7, 2), 4000, None),
    "shard_id_negative": ("input_ids", (2, 2), -7, None),
    "shard_pos_beyond": ("masked_lm_positions", (1, 2), 40, None),
    "shard_pos_negative": ("masked_lm_positions", (0, 0), -3, None),
    "shard_segment_2": ("segment_ids", (4, 12), 2, None),
    "shard_nsp_2": ("next_sentence_labels", (5,), 2, None),
}


BT = ["build-tokenizer", "--out", "{out}"]
BT_EXTEND = BT + ["--extend", "{d}/tok", "--train-data", "{d}/corpus.txt"]
PP = ["preprocess", "--tokenizer", "{d}/tok", "--out", "{out}"]
PT = [
    "pretrain",
    "--data-text",
    "--tokenizer",
    "{d}/tok",
    "--preset",
    "tiny",
    "--max-steps",
    "2",
    "--out",
    "{out}",
]
PT_ARGS = ["--train-data", "{d}/corpus.txt"]
EV = ["evaluate", "--checkpoint", "{d}/ckpt", "--tokenizer", "{d}/tok"]
PTP = [
    "pretrain",
    "--data-preprocessed",
    "--tokenizer",
    "{d}/tok",
    "--preset",
    "tiny",
    "--max-steps",
    "2",
    "--batch-size",
    "4",
    "--out",
    "{out}",
    "--train-data",
]
EVP = ["evaluate", "--checkpoint", "{d}/ckpt", "--batch-size", "4", "--data-preprocessed"]

CASES = {
    # build-tokenizer
    "bt-missing": (BT + ["--train-data", "{d}/nope.txt", "--vocab-size", "500"], "no such file"),
    "bt-empty": (BT + ["--train-data", "{d}/empty.txt", "--vocab-size", "500"], "is empty"),
    "bt-blank": (BT + ["--train-data", "{d}/blank.txt", "--vocab-size", "500"], "is empty"),
    "bt-binary": (BT + ["--train-data", "{d}/binary.bin", "--vocab-size", "500"], "binary"),
    "bt-vocab-zero": (BT + ["--train-data", "{d}/corpus.txt", "--vocab-size", "0"], "--vocab-size"),
    "bt-vocab-negative": (
        BT + ["--train-data", "{d}/corpus.txt", "--vocab-size", "-5"],
        "--vocab-size",
    ),
    "bt-vocab-small": (BT + ["--train-data", "{d}/corpus.txt", "--vocab-size", "20"], "too small"),
    "bt-spm-vocab-60": (
        BT + ["--type", "sentencepiece", "--train-data", "{d}/corpus.txt", "--vocab-size", "60"],
        "and one more piece need --vocab-size",
    ),
    "bt-spm-vocab-20": (
        BT + ["--type", "sentencepiece", "--train-data", "{d}/corpus.txt", "--vocab-size", "20"],
        "and one more piece need --vocab-size",
    ),
    "bt-no-source": (BT, "exactly one of"),
    "bt-extend-no-n": (BT_EXTEND, "together"),
    "bt-extend-no-data": (BT + ["--extend", "{d}/tok", "--add-tokens", "5"], "needs --train-data"),
    "bt-extend-zero": (BT_EXTEND + ["--add-tokens", "0"], "--add-tokens must be >= 1"),
    "bt-extend-missing": (
        BT + ["--extend", "{d}/nope", "--train-data", "{d}/corpus.txt", "--add-tokens", "5"],
        "no such file or directory, and not a published model name",
    ),
    "bt-extend-lowercase": (
        BT_EXTEND + ["--add-tokens", "5", "--no-lowercase"],
        "keeps the base's normaliser",
    ),
    "bt-two-sources": (
        BT + ["--train-data", "{d}/corpus.txt", "--vocab-file", "{d}/tok/vocab.txt"],
        "exactly one of",
    ),
    "bt-vocab-no-specials": (BT + ["--vocab-file", "{d}/novocab.txt"], "special tokens"),
    "bt-vocab-latin1": (BT + ["--vocab-file", "{d}/latin1.txt"], "not valid UTF-8"),
    "bt-vocab-binary": (BT + ["--vocab-file", "{d}/binary.bin"], "binary"),
    "bt-spm-garbage": (BT + ["--sentencepiece-model", "{d}/binary.bin"], "SentencePiece"),
    "bt-bad-type": (BT + ["--type", "bpe", "--train-data", "{d}/corpus.txt"], "--type"),
    "bt-min-frequency": (
        BT + ["--train-data", "{d}/corpus.txt", "--min-frequency", "-1"],
        "--min-frequency",
    ),
    # download
    "dl-unknown": (["download", "wikitext7", "--out", "{out}"], "unknown name"),
    "dl-bad-sha": (["download", "wikitext2", "--out", "{out}", "--sha256", "xyz"], "--sha256"),
    "dl-unreachable": (
        [
            "download",
            "wikitext2",
            "--out",
            "{out}",
            "--retries",
            "0",
            "--url",
            "http://127.0.0.1:9/wikitext-2-v1.zip",
        ],
        "could not download",
    ),
    "dl-missing-file-url": (
        [
            "download",
            "wikitext2",
            "--out",
            "{out}",
            "--url",
            "file:///nonexistent/wikitext-2-v1.zip",
        ],
        "could not download",
    ),
    "dl-negative-retries": (
        ["download", "wikitext2", "--out", "{out}", "--retries", "-1"],
        "--retries",
    ),
    # preprocess
    "pp-missing": (PP + ["--input", "{d}/nope.txt"], "no such file"),
    "pp-empty": (PP + ["--input", "{d}/empty.txt"], "is empty"),
    "pp-binary": (PP + ["--input", "{d}/binary.bin"], "binary"),
    "pp-no-tokenizer": (
        ["preprocess", "--input", "{d}/corpus.txt", "--out", "{out}"],
        "--tokenizer",
    ),
    "pp-not-a-tokenizer": (
        [
            "preprocess",
            "--input",
            "{d}/corpus.txt",
            "--tokenizer",
            "{d}/plain_dir",
            "--out",
            "{out}",
        ],
        "not a tokenizer directory",
    ),
    "pp-seq-zero": (
        PP + ["--input", "{d}/corpus.txt", "--max-seq-length", "0"],
        "--max-seq-length",
    ),
    "pp-seq-huge": (
        PP + ["--input", "{d}/corpus.txt", "--max-seq-length", "100000"],
        "--max-seq-length",
    ),
    "pp-prob-high": (
        PP + ["--input", "{d}/corpus.txt", "--masked-lm-prob", "1.5"],
        "--masked-lm-prob",
    ),
    "pp-prob-negative": (
        PP + ["--input", "{d}/corpus.txt", "--masked-lm-prob", "-0.1"],
        "--masked-lm-prob",
    ),
    "pp-short-prob": (
        PP + ["--input", "{d}/corpus.txt", "--short-seq-prob", "2"],
        "--short-seq-prob",
    ),
    "pp-dupe-zero": (PP + ["--input", "{d}/corpus.txt", "--dupe-factor", "0"], "--dupe-factor"),
    "pp-workers-zero": (PP + ["--input", "{d}/corpus.txt", "--workers", "0"], "--workers"),
    "pp-shard-zero": (PP + ["--input", "{d}/corpus.txt", "--shard-size", "0"], "--shard-size"),
    "pp-eval-one": (PP + ["--input", "{d}/corpus.txt", "--eval-fraction", "1"], "--eval-fraction"),
    "pp-max-pred": (
        PP + ["--input", "{d}/corpus.txt", "--max-predictions-per-seq", "0"],
        "--max-predictions-per-seq",
    ),
    "pp-format": (PP + ["--input", "{d}/corpus.txt", "--input-format", "xml"], "--input-format"),
    # pretrain
    "pt-batch-zero": (PT + PT_ARGS + ["--batch-size", "0"], "--batch-size"),
    "pt-lr-negative": (PT + PT_ARGS + ["--lr", "-1"], "--lr"),
    "pt-warmup-ratio": (PT + PT_ARGS + ["--warmup-ratio", "1.5"], "--warmup-ratio"),
    "pt-seq-too-long": (PT + PT_ARGS + ["--max-seq-length", "4096"], "max_position_embeddings"),
    "pt-missing-train": (PT + ["--train-data", "{d}/nope.txt"], "no such file"),
    "pt-empty-train": (PT + ["--train-data", "{d}/empty.txt"], "is empty"),
    "pt-binary-train": (PT + ["--train-data", "{d}/binary.bin"], "binary"),
    "pt-missing-eval": (PT + PT_ARGS + ["--eval-data", "{d}/nope.txt"], "no such file"),
    "pt-resume-none": (PT + PT_ARGS + ["--resume"], "no complete checkpoint"),
    "pt-init-not-bert": (PT + PT_ARGS + ["--init-from", "{d}/plain_dir"], "not a BERT checkpoint"),
    "pt-init-mismatch": (
        PT[:4] + ["--max-steps", "2", "--out", "{out}", "--init-from", "{d}/ckpt77"] + PT_ARGS,
        "tokenizer has 1000 tokens",
    ),
    "pt-init-corrupt": (
        PT[:4] + ["--max-steps", "2", "--out", "{out}", "--init-from", "{d}/corrupt"] + PT_ARGS,
        "unreadable safetensors",
    ),
    "pt-no-steps": (["pretrain", "--data-text", "--out", "{out}"] + PT_ARGS, "--max-steps"),
    "pt-steps-zero": (PT[:-4] + ["--max-steps", "0", "--out", "{out}"] + PT_ARGS, "--max-steps"),
    "pt-shards-are-text": (
        [
            "pretrain",
            "--data-preprocessed",
            "--train-data",
            "{d}/plain_dir",
            "--tokenizer",
            "{d}/tok",
            "--max-steps",
            "2",
            "--out",
            "{out}",
        ],
        "holds no *.hdf5",
    ),
    "pt-bad-heads": (PT + PT_ARGS + ["--num-attention-heads", "3"], "divisible"),
    "pt-shard-vocab-header": (
        PTP + ["{d}/shard_vocab_header"],
        "training_00000.hdf5: preprocessed with a 30,522-token vocabulary; this model has 1,000",
    ),
    "pt-shard-id-large": (
        PTP + ["{d}/shard_id_large"],
        "input_ids holds 1,500 (example 3), but ids must be below 1,000; likely preprocessed "
        "with a larger vocabulary",
    ),
    "pt-shard-label-large": (PTP + ["{d}/shard_label_large"], "masked_lm_ids holds 4,000"),
    "pt-shard-id-negative": (PTP + ["{d}/shard_id_negative"], "input_ids holds -7"),
    "pt-shard-pos-beyond": (
        PTP + ["{d}/shard_pos_beyond"],
        "masked_lm_positions holds 40 (example 1), but positions must be below the sequence "
        "length 16",
    ),
    "pt-shard-pos-negative": (PTP + ["{d}/shard_pos_negative"], "masked_lm_positions holds -3"),
    "pt-shard-segment-2": (PTP + ["{d}/shard_segment_2"], "segment_ids holds 2 (example 4)"),
    "pt-shard-nsp-2": (PTP + ["{d}/shard_nsp_2"], "next_sentence_labels holds 2 (example 5)"),
    "pt-shard-eval-bad": (
        PTP + ["{d}/shard_ok", "--eval-data", "{d}/shard_nsp_2"],
        "next_sentence_labels holds 2",
    ),
    "pt-shards-weight-negative": (PTP + ["{d}/shard_ok:-1"], "'-1' is not a positive number"),
    "pt-shards-weight-text": (PTP + ["{d}/shard_ok:abc"], "'abc' is not a positive number"),
    "pt-shards-twice": (
        PTP + ["{d}/shard_ok", "--train-data", "{d}/shard_ok/"],
        "shard_ok is listed twice",
    ),
    "pt-shards-weight-on-eval": (
        PTP + ["{d}/shard_ok", "--eval-data", "{d}/shard_ok:2"],
        "weights (DIR:WEIGHT) apply to --train-data only",
    ),
    "ev-shards-twice": (EVP + ["{d}/shard_ok", "--data-preprocessed", "{d}/shard_ok"], "twice"),
    "pp-gz-damaged": (PP + ["--input", "{d}/cut.txt.gz"], "cannot be read as gz-compressed text"),
    "pt-out-is-file": (PT[:-1] + ["{d}/corpus.txt"] + PT_ARGS, "not a directory"),
    "pt-tokenizer-and-vocab": (PT + PT_ARGS + ["--vocab-file", "{d}/tok/vocab.txt"], "not both"),
    "pp-tokenizer-and-vocab": (
        PP + ["--input", "{d}/corpus.txt", "--vocab-file", "{d}/tok/vocab.txt"],
        "not both",
    ),
    "pt-eps-zero": (PT + PT_ARGS + ["--eps", "0"], "--eps"),
    "pt-lr-power-zero": (PT + PT_ARGS + ["--lr-power", "0"], "--lr-power"),
    "pt-label-smoothing-one": (PT + PT_ARGS + ["--label-smoothing", "1"], "--label-smoothing"),
    "pt-label-smoothing-neg": (
        PT + PT_ARGS + ["--label-smoothing", "-0.1"],
        "--label-smoothing",
    ),
    "pt-short-seq-prob": (PT + PT_ARGS + ["--short-seq-prob", "1.5"], "--short-seq-prob"),
    "pt-hidden-dropout": (PT + PT_ARGS + ["--hidden-dropout", "1"], "--hidden-dropout"),
    "pt-attention-dropout": (
        PT + PT_ARGS + ["--attention-dropout", "-0.1"],
        "--attention-dropout",
    ),
    "pt-eval-batch-size-zero": (PT + PT_ARGS + ["--eval-batch-size", "0"], "--eval-batch-size"),
    # evaluate
    "ev-not-a-dir": (
        ["evaluate", "--checkpoint", "{d}/corpus.txt", "--data-text", "{d}/corpus.txt"],
        "not a BERT checkpoint",
    ),
    "ev-plain-dir": (
        ["evaluate", "--checkpoint", "{d}/plain_dir", "--data-text", "{d}/corpus.txt"],
        "not a BERT checkpoint",
    ),
    "ev-config-only": (
        ["evaluate", "--checkpoint", "{d}/config_only", "--data-text", "{d}/corpus.txt"],
        "not a BERT checkpoint",
    ),
    "ev-no-data": (EV, "exactly one of"),
    "ev-missing-data": (EV + ["--data-text", "{d}/nope.txt"], "no such file"),
    "ev-binary-data": (EV + ["--data-text", "{d}/binary.bin"], "binary"),
    "ev-batch-zero": (EV + ["--data-text", "{d}/corpus.txt", "--batch-size", "0"], "--batch-size"),
    "ev-masked-lm-prob": (
        EV + ["--data-text", "{d}/corpus.txt", "--masked-lm-prob", "1"],
        "--masked-lm-prob",
    ),
    "ev-max-pred-zero": (
        EV + ["--data-text", "{d}/corpus.txt", "--max-predictions-per-seq", "0"],
        "--max-predictions-per-seq",
    ),
    "ev-mismatch": (
        [
            "evaluate",
            "--checkpoint",
            "{d}/ckpt77",
            "--tokenizer",
            "{d}/tok",
            "--data-text",
            "{d}/corpus.txt",
        ],
        "tokenizer has 1000 tokens",
    ),
    "ev-corrupt": (
        [
            "evaluate",
            "--checkpoint",
            "{d}/corrupt",
            "--tokenizer",
            "{d}/tok",
            "--data-text",
            "{d}/corpus.txt",
        ],
        "unreadable safetensors",
    ),
    "ev-shard-vocab-header": (
        EVP + ["{d}/shard_vocab_header"],
        "preprocessed with a 30,522-token vocabulary; this model has 1,000",
    ),
    "ev-shard-label-large": (EVP + ["{d}/shard_label_large"], "masked_lm_ids holds 4,000"),
    "ev-shard-pos-negative": (EVP + ["{d}/shard_pos_negative"], "masked_lm_positions holds -3"),
    "ev-shard-segment-2": (EVP + ["{d}/shard_segment_2"], "segment_ids holds 2"),
    "ev-shard-nsp-2": (EVP + ["{d}/shard_nsp_2"], "next_sentence_labels holds 2"),
    "ev-shards-missing": (
        ["evaluate", "--checkpoint", "{d}/ckpt", "--data-preprocessed", "{d}/plain_dir"],
        "holds no *.hdf5",
    ),
    # export-config
    "ec-bad-preset": (["export-config", "--preset", "gigantic", "--out", "{out}"], "--preset"),
    "ec-heads": (["export-config", "--num-attention-heads", "5", "--out", "{out}"], "divisible"),
    "ec-zero-layers": (
        ["export-config", "--num-hidden-layers", "0", "--out", "{out}"],
        "num_hidden_layers",
    ),
    "ec-not-ckpt": (
        ["export-config", "--from-checkpoint", "{d}/plain_dir", "--out", "{out}"],
        "not a BERT checkpoint",
    ),
    "ec-bad-act": (["export-config", "--hidden-act", "sigmoid", "--out", "{out}"], "hidden_act"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(invoke, files, tmp_path, case):
    args, needle = CASES[case]
    out = tmp_path / "output"
    args = [a.replace("{d}", str(files)).replace("{out}", str(out)) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr
    # nothing at the output path looks complete
    if out.exists():
        leftovers = [p.name for p in out.rglob("*") if p.is_file()]
        complete = {
            "tokenizer.json",
            "config.json",
            "model.safetensors",
            "train.txt",
            ".bertcli-download.json",
            "trainer_state.pt",
        }
        assert not complete & set(leftovers), leftovers
        assert not [p for p in out.rglob("*.hdf5")], "a shard was left behind"


# ---- a full disk: one line naming the path and the space needed, nothing complete left behind.
# Where the tests may mount a tmpfs (root), the disk really fills; everywhere, the libraries'
# own error forms are raised from the writers they wrap.

FULL = "no space left on device writing"


def _filled(args: list[str], files) -> list[str]:
    return [a.replace("{d}", str(files)) for a in args]


def _one_line(result, needle: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], result.stderr
    assert "Traceback" not in result.output + result.stderr
    return lines[-1]


@pytest.mark.parametrize("preflight", [True, False])
def test_full_disk_preprocess(invoke, files, small_disk, monkeypatch, preflight):
    disk = small_disk("128k")
    if not preflight:  # the disk fills inside libhdf5's writes: the sink must catch it
        monkeypatch.setattr("bertcli.data.shards.check_space", lambda *a, **k: None)
    args = ["preprocess", "--input", files / "corpus.txt", "--tokenizer", files / "tok"]
    result = invoke(*args, "--out", disk / "pp", "--workers", "1", "--max-seq-length", "64")
    line = _one_line(result, FULL)
    assert "training_00000.hdf5" in line and "needs about" in line and "free there" in line
    assert not list(disk.rglob("*.hdf5")) and not list(disk.rglob("*.tmp"))


@pytest.mark.parametrize("preflight", [True, False])
def test_full_disk_build_tokenizer(invoke, files, small_disk, monkeypatch, preflight):
    disk = small_disk("16k")
    if not preflight:  # tokenizers' bare Exception("... (os error 28)") from its Rust writer
        monkeypatch.setattr("bertcli.tokenizer.check_space", lambda *a, **k: None)
    args = ["build-tokenizer", "--train-data", files / "corpus.txt", "--vocab-size", "1000"]
    line = _one_line(invoke(*args, "--out", disk / "tok"), FULL)
    assert f"{disk / 'tok'} (the tokenizer needs about" in line
    assert not list(disk.iterdir())  # no temp directory left either


@pytest.mark.slow
def test_full_disk_checkpoint_keeps_the_older_one(invoke, files, small_disk, monkeypatch):
    from bertcli.hf import load_pretrained
    from bertcli.train.checkpoint import latest_checkpoint

    disk = small_disk("12m")  # one tiny-preset checkpoint with AdamW state (~7.5 MB) fits
    # no free-space check first: SafetensorError or torch.save's errno-less RuntimeError
    monkeypatch.setattr("bertcli.train.checkpoint.check_space", lambda *a, **k: None)
    args = _filled(PT[:6] + PT_ARGS, files) + ["--max-steps", "6", "--save-every", "3"]
    result = invoke(*args, "--batch-size", "2", "--max-seq-length", "32", "--out", disk / "run")
    line = _one_line(result, FULL)
    assert "step_00000006 (the checkpoint needs about" in line, line
    kept = latest_checkpoint(disk / "run" / "checkpoints")
    assert kept is not None and kept.name == "step_00000003"
    load_pretrained(kept)  # complete and readable
    assert not [p for p in (disk / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_library_disk_errors_become_one_line(tmp_path, monkeypatch, files):
    """The wrapped forms, raised where the real libraries raise them (no root needed)."""
    import errno
    import io

    import torch
    from safetensors import SafetensorError

    from bertcli.config import BertConfig
    from bertcli.data.shards import ShardAppender, shard_length
    from bertcli.errors import DiskFullError
    from bertcli.tokenizer import load_tokenizer, save_tokenizer
    from bertcli.train.checkpoint import save_checkpoint

    model = BertForPreTraining(
        BertConfig(
            vocab_size=99,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    ckpt = tmp_path / "checkpoints" / "step_00000001"
    with monkeypatch.context() as m:  # too little room: refused before anything is written
        m.setattr("bertcli.errors.free_bytes", lambda path: 5_000_000)
        with pytest.raises(DiskFullError, match="needs about .* MB; 5.0 MB free there"):
            save_checkpoint(ckpt, model, None, {"big": torch.zeros(2_000_000)}, {})
        assert not ckpt.parent.exists()

    def safetensors_full(*args, **kwargs):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    with monkeypatch.context() as m:
        m.setattr("bertcli.hf.save_file", safetensors_full)
        with pytest.raises(DiskFullError, match=f"{FULL} {ckpt} \\(the checkpoint needs about"):
            save_checkpoint(ckpt, model, None, {"step": 1}, {})

    def torch_full(*args, **kwargs):  # torch.save on ENOSPC: no errno, only a position
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", torch_full)
        with pytest.raises(RuntimeError, match="unexpected pos"):  # disk not full: not blamed
            save_checkpoint(ckpt, model, None, {"step": 1}, {})
        m.setattr("bertcli.errors.free_bytes", lambda path: 1000)
        m.setattr("bertcli.train.checkpoint.check_space", lambda *a, **k: None)
        with pytest.raises(DiskFullError, match="1.0 kB free there"):
            save_checkpoint(ckpt, model, None, {"step": 1}, {})
    assert not ckpt.parent.exists() or not list(ckpt.parent.iterdir())

    class Quota(io.FileIO):  # a disk with 20 kB left
        def write(self, data):
            if self.tell() + len(data) > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    with monkeypatch.context() as m:
        m.setattr(
            "bertcli.data.shards.open",
            lambda p, mode: io.BufferedRandom(Quota(p, "w+")),
            raising=False,
        )
        appender = ShardAppender(tmp_path / "shards" / "training_00000.hdf5")
        (tmp_path / "shards").mkdir()
        arrays = _valid_shard_arrays(n=2000, seq=64)
        appender.append({k: getattr(arrays, k) for k in KEYS})
        with pytest.raises(DiskFullError, match="training_00000.hdf5 \\(the shard needs about"):
            appender.close()
        assert not list((tmp_path / "shards").iterdir())
        small = ShardAppender(tmp_path / "shards" / "small.hdf5")  # fits: written as before
        small.append({k: getattr(_valid_shard_arrays(), k) for k in KEYS})
        small.close()
    assert shard_length(tmp_path / "shards" / "small.hdf5") == (12, 16, 3)

    tok = load_tokenizer(files / "tok")
    real_write_text = type(tmp_path).write_text

    def vocab_full(self, *args, **kwargs):
        if self.name == "vocab.txt":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(type(tmp_path), "write_text", vocab_full)
        with pytest.raises(DiskFullError, match=f"{FULL} .*vocab.txt"):
            save_tokenizer(tok, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_os_errors_reaching_the_cli_are_one_line(invoke, files, tmp_path, monkeypatch):
    import errno

    from bertcli.config import BertConfig

    def raiser(code, text):
        def save(self, path):
            raise OSError(code, text, str(path))

        return save

    monkeypatch.setattr(BertConfig, "save", raiser(errno.ENOSPC, "No space left on device"))
    line = _one_line(invoke("export-config", "--out", tmp_path / "c.json"), FULL)
    assert str(tmp_path / "c.json") in line and "free there" in line
    monkeypatch.setattr(BertConfig, "save", raiser(errno.EACCES, "Permission denied"))
    line = _one_line(invoke("export-config", "--out", tmp_path / "c.json"), "Permission denied")
    assert line == f"error: Permission denied: {tmp_path / 'c.json'}"

    def no_name(*args, **kwargs):  # a write's OSError often carries no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.undo()  # BertConfig.save writes again
    monkeypatch.setattr("bertcli.pretrain._write_run_json", no_name)
    args = _filled(PT[:-1], files) + [tmp_path / "run"] + _filled(PT_ARGS, files)
    line = _one_line(invoke(*args), FULL)
    assert line.startswith(f"error: {FULL} {tmp_path / 'run'} (")  # the run dir, at least


def test_dataloader_worker_errors_keep_their_line(invoke, files, tmp_path):
    """A bad shard opened inside a DataLoader worker: the worker's message, not torch's."""
    from bertcli.errors import UserError, user_message

    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\nbertcli.errors.UserError: shard.hdf5: bad\n'
    )
    assert user_message(wrapped) == "shard.hdf5: bad"
    assert user_message(UserError("plain")) == "plain"
    data = tmp_path / "two"
    data.mkdir()
    write_shard(data / "a_00000.hdf5", _valid_shard_arrays(n=8))
    bad = _valid_shard_arrays(n=8)
    bad.segment_ids[3, 3] = 2
    write_shard(data / "b_00001.hdf5", bad)  # passes the start-up checks (first shard, header)
    args = _filled(PTP[:-3], files) + ["--out", tmp_path / "run", "--train-data", data]
    line = _one_line(invoke(*args, "--num-workers", "1", "--max-steps", "8"), "segment_ids holds 2")
    assert "b_00001.hdf5" in line
