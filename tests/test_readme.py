"""Run every command of the README, in order, at small sizes, so the README cannot rot.

The README's commands are taken verbatim from its ```bash and ```python blocks; the only changes
are the size substitutions in SMALL (model size, steps, batch, process counts), `--url` pointing
`download` at a loopback server that serves WikiText-2 built from ../shared/data, and a
multi-node rendezvous run as one node. `pip install` is what CI itself does; `tensorboard` is
checked by looking for its event files instead of starting a server.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT, VOCAB_DIR, WIKITEXT2, ZH_DIR, require
from tests.test_download import Server

SMALL = [
    (r"--preset (base|small|medium|large)\b", "--preset tiny"),
    (r"--max-steps \d+", "--max-steps 2"),
    (r"--num-epochs \d+", "--max-steps 2"),
    (r"--batch-size \d+", "--batch-size 4"),
    (r"--save-every \d+", "--save-every 1"),
    (r"--eval-every \d+", "--eval-every 2"),
    (r"--nproc-per-node \d+", "--nproc-per-node 2"),
    (r"--nnodes \d+ (.*)--rdzv-id \S+", r"--standalone \1"),
    (r"--rdzv-backend \S+ --rdzv-endpoint \S+ ", ""),
]


def readme_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def small(command: str) -> str:
    for pattern, replacement in SMALL:
        command = re.sub(pattern, replacement, command)
    return command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for name in ("uncased", "chinese"):
        (root / f"bert-base-{name}").mkdir()
        (root / f"bert-base-{name}" / "vocab.txt").write_bytes(
            require(VOCAB_DIR / f"bert-base-{name}.txt").read_bytes()
        )
    (root / "wiki_zh").mkdir()
    lines = require(ZH_DIR / "wiki2019zh-wiki_zh-AA-wiki_00.jsonl").read_text().splitlines()
    (root / "wiki_zh" / "wiki_00.jsonl").write_text("\n".join(lines[:6]) + "\n")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "valid", "test"):
            zf.write(require(WIKITEXT2 / f"{split}.txt"), f"wikitext-2/wiki.{split}.tokens")
    server = Server(buffer.getvalue())
    yield root, server
    server.close()


def test_readme_has_the_tutorial_commands():
    commands = " ".join(code for _, code in readme_blocks())
    for needle in (
        "bertcli download",
        "bertcli build-tokenizer",
        "bertcli preprocess",
        "bertcli pretrain",
        "bertcli evaluate",
        "bertcli export-config",
        "torchrun",
        "--init-from",
        "--precision bf16",
        "tensorboard --logdir",
        "python -m pytest",
        "from_pretrained",
    ):
        assert needle in commands, needle


def test_every_readme_command_runs(workspace, invoke, monkeypatch):
    root, server = workspace
    monkeypatch.chdir(root)
    ran = 0
    for kind, code in readme_blocks():
        if kind == "python":
            proc = subprocess.run(
                [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
            ran += 1
            continue
        for line in code.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("pip install"):
                continue
            if line.startswith("python -m pytest"):
                continue  # this very suite
            command = small(line)
            if command.startswith("bertcli download"):
                command += f" --url {server.url}"
            args = shlex.split(command)
            if args[0] == "tensorboard":
                logdir = root / args[args.index("--logdir") + 1]
                assert list(logdir.glob("events.out.tfevents.*")), f"no events in {logdir}"
            elif args[0] == "torchrun":
                proc = subprocess.run(
                    [sys.executable, "-m", "torch.distributed.run", *args[1:]],
                    cwd=root,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert proc.returncode == 0, (command, proc.stderr[-3000:])
            else:
                assert args[0] == "bertcli", command
                result = invoke(*args[1:])
                assert result.exit_code == 0, (command, result.output, result.stderr)
            ran += 1
    assert ran >= 15
