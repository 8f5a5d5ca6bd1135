"""Shell completions are generated from the app and must not go stale."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gen_completions  # noqa: E402


@pytest.mark.parametrize("name", ["bertcli.bash", "_bertcli", "bertcli.fish"])
def test_completions_are_current(name):
    expected = gen_completions.render_all()[name]
    path = ROOT / "completions" / name
    assert path.is_file(), f"{path} missing: run python scripts/gen_completions.py"
    assert path.read_text() == expected, "stale: run python scripts/gen_completions.py"


def test_completions_cover_every_command_and_option():
    import typer

    from bertcli.cli import app

    group = typer.main.get_command(app)
    bash = (ROOT / "completions" / "bertcli.bash").read_text()
    for name, command in group.commands.items():
        assert f"        {name})" in bash
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in bash, (name, opt)


@pytest.mark.parametrize("shell, name", [("bash", "bertcli.bash"), ("zsh", "_bertcli")])
def test_completion_syntax(shell, name):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    proc = subprocess.run([shell, "-n", str(ROOT / "completions" / name)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_bash_completion_completes(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    script = f"""
source {ROOT / "completions" / "bertcli.bash"}
COMP_WORDS=(bertcli pretrain --lr-policy co); COMP_CWORD=3; _bertcli; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(bertcli pre); COMP_CWORD=1; _bertcli; echo "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.splitlines()
    assert out[0].split() == ["cosine", "constant"]
    assert out[1].split() == ["preprocess", "pretrain"]


def test_fish_completion_completes():
    if shutil.which("fish") is None:
        pytest.skip("fish not installed")
    path = ROOT / "completions" / "bertcli.fish"
    assert subprocess.run(["fish", "-n", str(path)], capture_output=True).returncode == 0
    script = f"source {path}; complete -C 'bertcli pretrain --optimizer l'"
    out = subprocess.run(["fish", "-c", script], capture_output=True, text=True).stdout
    assert out.split("\t")[0] == "lamb"


def test_zsh_completion_registers():
    if shutil.which("zsh") is None:
        pytest.skip("zsh not installed")
    script = (
        f"autoload -U compinit; fpath=({ROOT / 'completions'} $fpath); compinit -u; "
        "print ${_comps[bertcli]}"
    )
    out = subprocess.run(["zsh", "-c", script], capture_output=True, text=True).stdout
    assert out.strip().endswith("_bertcli")
