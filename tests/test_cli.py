"""The CLI surface: version, help lists working commands, export-config and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from bertcli import __version__

COMMANDS = [
    "download",
    "build-tokenizer",
    "preprocess",
    "pretrain",
    "evaluate",
    "finetune",
    "export-config",
    "push",
]


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_commands_in_pipeline_order(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    at = [result.stdout.index(f" {command} ") for command in COMMANDS]
    assert at == sorted(at), result.stdout


@pytest.mark.parametrize("args", [[], ["pretrain"], ["preprocess"], ["evaluate"]])
def test_flags_show_no_value_type(invoke, args):
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout
    assert "<int>" in result.stdout or "<path>" in result.stdout or not args  # types stay


def test_export_config_base(invoke, tmp_path):
    out = tmp_path / "bert-config.json"
    result = invoke("export-config", "--preset", "base", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["hidden_size"] == 768 and data["num_hidden_layers"] == 12
    assert data["model_type"] == "bert"


def test_export_config_overrides(invoke, tmp_path):
    out = tmp_path / "c.json"
    result = invoke(
        "export-config",
        "--preset",
        "tiny",
        "--vocab-size",
        "21128",
        "--hidden-act",
        "relu",
        "--num-hidden-layers",
        "3",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["vocab_size"], data["hidden_act"], data["num_hidden_layers"]) == (21128, "relu", 3)


def test_export_config_from_checkpoint(invoke, tmp_path):
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining

    BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=50)).save_pretrained(
        tmp_path / "ck"
    )
    result = invoke(
        "export-config", "--from-checkpoint", tmp_path / "ck", "--out", tmp_path / "o.json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o.json").read_text())["vocab_size"] == 50


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "huge"], "--preset"),
        (["--hidden-size", "100", "--num-attention-heads", "3"], "divisible"),
        (["--vocab-size", "0"], "vocab_size"),
        (["--vocab-size", "abc"], "--vocab-size"),
        (["--from-checkpoint", "{tmp}"], "not a BERT checkpoint"),
        (["--from-checkpoint", "{tmp}/missing"], "not a directory"),
        (["--out", "{tmp}"], "directory"),
        (["--bogus"], "--bogus"),
    ],
)
def test_export_config_bad_input(invoke, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke("export-config", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_example_defaults_and_a_meaning_per_option(invoke, command):
    import typer

    from bertcli.cli import app

    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "default" in result.stdout
    click_command = typer.main.get_command(app).commands[command]
    for param in click_command.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{command} {param.opts} has no help"


def test_help_lists_exactly_the_working_commands():
    import typer

    from bertcli.cli import app

    assert sorted(typer.main.get_command(app).commands) == sorted(COMMANDS)


def test_python_m_bertcli_runs():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "bertcli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


# ---- options added for issue 13: each must reach what it controls -------------------------------


@pytest.fixture(scope="module")
def small_run_inputs(tmp_path_factory):
    from bertcli.tokenizer import train_tokenizer
    from tests.conftest import WIKITEXT2, require

    root = tmp_path_factory.mktemp("opts")
    text = require(WIKITEXT2 / "valid.txt").read_text()
    (root / "train.txt").write_text(text[:40_000])
    (root / "valid.txt").write_text(text[100_000:110_000])
    train_tokenizer("wordpiece", [root / "train.txt"], 600, root / "tok")
    return root


def test_new_pretrain_options_reach_the_run(invoke, small_run_inputs, tmp_path, monkeypatch):
    import bertcli.train.trainer as trainer_module
    from bertcli.train.checkpoint import latest_checkpoint

    seen_eval_batch_sizes = []
    real_evaluate = trainer_module.evaluate_model

    def recording_evaluate(model, data, batch_size, *args, **kwargs):
        seen_eval_batch_sizes.append(batch_size)
        return real_evaluate(model, data, batch_size, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", recording_evaluate)
    d, out = small_run_inputs, tmp_path / "run"
    result = invoke(
        "pretrain", "--data-text", "--train-data", d / "train.txt", "--eval-data",
        d / "valid.txt", "--tokenizer", d / "tok", "--preset", "tiny", "--hidden-size", "32",
        "--num-attention-heads", "2", "--max-seq-length", "32", "--batch-size", "4",
        "--max-steps", "4", "--log-every", "1", "--eval-batches", "1", "--lr", "1e-3",
        "--lr-policy", "polynomial", "--lr-power", "2", "--warmup-steps", "0",
        "--eps", "1e-8", "--hidden-dropout", "0", "--attention-dropout", "0.05",
        "--eval-batch-size", "3", "--short-seq-prob", "0.5", "--no-nsp", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    # polynomial, power 2, no warmup, 4 steps: lr * (1 - k/4) ** 2 at steps k = 0..3
    assert lrs == pytest.approx([1e-3 * (1 - k / 4) ** 2 for k in range(4)], rel=1e-9)
    ckpt = latest_checkpoint(out / "checkpoints")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["attention_probs_dropout_prob"] == 0.05
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert {g["eps"] for g in state["optimizer"]["param_groups"]} == {1e-8}
    assert seen_eval_batch_sizes == [3]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["short_seq_prob"] == 0.5


def test_short_seq_prob_shortens_text_examples(small_run_inputs):
    from bertcli.data.datasets import TextDataset
    from bertcli.tokenizer import load_tokenizer

    tok = load_tokenizer(small_run_inputs / "tok")

    def mean_length(prob):
        data = TextDataset([small_run_inputs / "train.txt"], tok, max_seq_length=64,
                           short_seq_prob=prob)  # fmt: skip
        return sum(int(data[i]["attention_mask"].sum()) for i in range(len(data))) / len(data)

    # WikiText paragraphs are long, so a short target shortens only some chunks; ignoring the
    # option would give equal means
    assert mean_length(1.0) < mean_length(0.0) - 1.0


def test_evaluate_masking_options(invoke, small_run_inputs, tmp_path):
    from bertcli.config import BertConfig
    from bertcli.model import BertForPreTraining
    from bertcli.tokenizer import load_tokenizer

    tok = load_tokenizer(small_run_inputs / "tok")
    ckpt = tmp_path / "ckpt"
    BertForPreTraining(BertConfig.from_preset("tiny", vocab_size=tok.vocab_size)).save_pretrained(
        ckpt
    )
    base = ["evaluate", "--checkpoint", ckpt, "--tokenizer", small_run_inputs / "tok",
            "--data-text", small_run_inputs / "valid.txt", "--max-seq-length", "64", "--json",
            "--device", "cpu"]  # fmt: skip

    def run(*extra):
        result = invoke(*base, *extra)
        assert result.exit_code == 0, result.output + result.stderr
        return json.loads(result.stdout)

    default = run()
    more = run("--masked-lm-prob", "0.3", "--max-predictions-per-seq", "40")
    capped = run("--masked-lm-prob", "0.3", "--max-predictions-per-seq", "2")
    wwm = run("--whole-word-masking")
    assert default["num_sequences"] == more["num_sequences"] == capped["num_sequences"]
    assert more["num_masked_tokens"] > 1.6 * default["num_masked_tokens"]
    assert capped["num_masked_tokens"] <= 2 * capped["num_sequences"]
    # whole words change which tokens are masked (not how many): a different loss
    assert wwm["mlm_loss"] != pytest.approx(default["mlm_loss"], rel=1e-6)
