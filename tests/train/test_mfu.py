"""MFU: the peak table by device name, FLOPs per token against torch's FLOP counter, and the
checks that decide --compile and flash-attn before training starts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bertcli.config import BertConfig
from bertcli.errors import UserError
from bertcli.model import BertForPreTraining, masked_positions
from bertcli.train.kernels import check_compile, compile_problem, flash_attention
from bertcli.train.mfu import device_peak_tflops, flops_per_token, mfu, peak_tflops


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40", None),  # not L4, not L40S: unknown, so no MFU
        ("NVIDIA GeForce RTX 4090", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_table_by_device_name(name, peak):
    assert peak_tflops(name) == peak


def test_mfu_is_none_off_known_gpus_and_by_hand_on_them():
    assert device_peak_tflops(torch.device("cpu"), "fp32") is None
    assert device_peak_tflops(torch.device("cpu"), "bf16") is None
    assert mfu(1e6, 1e9, None) is None
    # 300k tokens/s x 1 GFLOP per token = 300 TFLOP/s of a 989.4 TFLOP/s peak
    assert mfu(3e5, 1e9, 989.4) == pytest.approx(300 / 989.4)


def test_flops_per_token_matches_torch_flop_counter():
    """Forward + backward matmul FLOPs counted by torch, per token, within 1% of the formula
    (which leaves out the pooler, NSP head and elementwise work)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForPreTraining(config)
    model.bert.unpad_tokens = False  # every token is real: nothing to unpad
    B, T, P = 4, 64, 10  # P / T = 0.156 predicted per token
    ids = torch.randint(5, 1000, (B, T))
    labels = torch.full_like(ids, -100)
    labels[:, 1 : P + 1] = ids[:, 1 : P + 1]
    positions = masked_positions(labels, P)
    # the math backend runs attention as matmuls, which the counter sees (fused kernels it may not)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(
            ids,
            torch.zeros_like(ids),
            torch.ones_like(ids),
            masked_lm_labels=labels,
            masked_lm_positions=positions,
        )
        out.loss.backward()
    counted = counter.get_total_flops() / (B * T)
    assert counted == pytest.approx(flops_per_token(config, T, P / T), rel=0.01)


def test_compile_without_a_compiler_is_one_line():
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    assert compile_problem(torch.device("cpu")) is None  # this box has g++
    cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
            with pytest.raises(UserError, match="--compile: .*C\\+\\+ compiler.*without --compile"):
                check_compile(torch.device("cpu"))
    finally:
        cpp_compiler_search.cache_clear()


def test_compile_without_a_compiler_exits_2(invoke, tmp_path):
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
            result = invoke(
                "pretrain",
                "--data-text",
                "--preset",
                "tiny",
                "--max-steps",
                "1",
                "--compile",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "run"),
            )
    finally:
        cpp_compiler_search.cache_clear()
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --compile:"), result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in result.stderr


def test_flash_attention_off_the_gpu_is_silent():
    varlen, note = flash_attention(torch.device("cpu"), "fp32")
    assert varlen is None and note is None
