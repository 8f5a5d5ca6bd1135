"""The CLI surface: version, help lists working commands, export-config and its bad inputs."""

from __future__ import annotations

import json

import pytest

from bertcli import __version__

COMMANDS = ["download", "build-tokenizer", "preprocess", "pretrain", "evaluate", "export-config"]


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_commands(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


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
