"""Model FLOPs utilisation: achieved model FLOPs over the device's dense bf16/fp16 peak.

The peaks are the vendors' data-sheet figures for dense (not 2:4 sparse) bf16/fp16 tensor-core
math. On a device not in the table, or in fp32 (whose TF32 peak is a different number), MFU is
None: it is never guessed.
"""

from __future__ import annotations

import re

import torch

from bertcli.config import BertConfig

# (pattern on torch.cuda.get_device_name(), dense bf16 TFLOP/s); the first match wins, so the
# specific names come before the families they belong to
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bGH200\b", 989.4),  # Grace Hopper: an H100/H200-class GPU ("NVIDIA GH200 480GB")
    (r"\bH200 NVL\b", 835.0),
    (r"\bH200\b", 989.4),  # SXM
    (r"\bH100 NVL\b", 835.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b", 989.4),  # SXM (HBM3)
    (r"\bA100\b", 312.0),  # SXM and PCIe
    (r"\bL40S\b", 362.05),
    (r"\bL4\b", 121.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16/fp16 peak of a GPU by its name, None if unknown."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    """The peak that MFU is measured against here, or None (CPU, fp32, unknown GPU)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    return peak_tflops(torch.cuda.get_device_name(device))


def flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """Training FLOPs per token: 6 x (matmul params) + attention scores, sparse MLM head."""
    H, L, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * H * H + 2 * H * inter  # qkv + out + ffn weights
    attention = 2 * seq_len * H  # QK^T and AV per token per layer (multiply-adds)
    head = masked_fraction * (H * H + H * config.vocab_size)
    return 6.0 * (L * (per_layer + attention) + head)


def mfu(tokens_per_s: float, flops_token: float, peak: float | None) -> float | None:
    """Fraction of `peak` TFLOP/s that `tokens_per_s` (one device) achieves; None without a peak."""
    if peak is None or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_token / (peak * 1e12)
