"""Out of GPU memory is one line naming the batch-size flag: the CPU twin of tests/gpu.

No CPU run can exhaust a GPU, so the step (or evaluation) raises the exception CUDA's
allocator raises, `torch.OutOfMemoryError`; what is tested is everything around it: the CLI
exits with code 2 and one `error:` line, nothing is saved. tests/gpu/test_memory.py makes a
real one.
"""

from __future__ import annotations

import torch

from bertcli.train import trainer as trainer_module
from bertcli.train.memory import out_of_memory_message
from tests.train.conftest import pretrain_command


def _cli_args(corpus, tokenizer_dir, out, *extra):
    # pretrain_command's arguments after `python -m bertcli`
    return pretrain_command(corpus, tokenizer_dir, out, "--max-steps", "3", *extra)[3:]


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_step_out_of_memory_is_one_line_naming_batch_size(
    invoke, corpus, tokenizer_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_module.Trainer, "_train_step", _oom)
    result = invoke(*_cli_args(corpus, tokenizer_dir, tmp_path / "o"))
    assert result.exit_code == 2, result.output
    # progress lines go to stderr too: the error is one line, and the last
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr
    assert lines[0].startswith("error: out of GPU memory")
    assert "--batch-size 8" in lines[0] and "sequence length 64" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_evaluation_out_of_memory_names_eval_batch_size(
    invoke, corpus, tokenizer_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_module, "evaluate_model", _oom)
    extra = ("--eval-data", str(corpus / "valid.txt"), "--eval-batch-size", "4")
    result = invoke(*_cli_args(corpus, tokenizer_dir, tmp_path / "o", *extra))
    assert result.exit_code == 2, result.output
    # progress lines go to stderr too: the error is one line, and the last
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and result.stderr.strip().endswith(lines[0]), result.stderr
    assert "--eval-batch-size 4" in lines[0] and "(evaluation)" in lines[0]


def test_message_keeps_the_global_batch_advice_for_training_only():
    train = out_of_memory_message("--batch-size", 64, 512, "cuda:0")
    assert train == (
        "out of GPU memory on cuda:0 at --batch-size 64 x sequence length 512; lower "
        "--batch-size (and raise --batches-per-step by the same factor to keep the global batch)"
    )
    assert "--batches-per-step" not in out_of_memory_message("--eval-batch-size", 8, 128, "cuda:0")
