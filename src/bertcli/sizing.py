"""How much memory a model config asks for, checked against what the machine has before anything
is allocated.

A `config.json` is input like any other: `vocab_size` 10^9 or 10^8 layers would otherwise make
PyTorch allocate until the machine swaps or the kernel kills the process. The estimate counts the
parameters of `BertForPreTraining` exactly (the test compares it with a built model), at 4 bytes
each (fp32, how they are built); training adds the gradients and the optimizer's two moments
(Adam/LAMB: 16 bytes per parameter in all). The limit is the memory the kernel reports
available now (`MemAvailable`), or the free memory of the GPU the run trains on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bertcli.errors import UserError

if TYPE_CHECKING:
    import torch

    from bertcli.config import BertConfig

FP32 = 4
TRAINING_BYTES = 4 * FP32  # weights, gradients, two optimizer moments
# what a field is set back to, to find the one that makes a config large (BERT-base's values)
_REFERENCE = {
    "vocab_size": 30522,
    "num_hidden_layers": 12,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def parameter_count(config: BertConfig) -> int:
    """The parameters of `BertForPreTraining(config)` (the decoder is tied to the embeddings)."""
    h, i = config.hidden_size, config.intermediate_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h
    embeddings += 2 * h  # LayerNorm
    layer = (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h
    heads = (h * h + h) + 2 * h + config.vocab_size + (2 * h + 2)  # MLM transform, bias; NSP
    return embeddings + config.num_hidden_layers * layer + pooler + heads


def available_bytes(device: torch.device | None = None) -> int | None:
    """Free memory where the parameters will live: the GPU's, else the host's (None: unknown)."""
    if device is not None and device.type == "cuda":
        import torch

        with contextlib.suppress(RuntimeError):
            return int(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _largest_field(config: BertConfig) -> str:
    """The field whose value, set back to BERT-base's, shrinks the estimate the most."""
    best, best_count = "hidden_size", parameter_count(config)
    for name, reference in _REFERENCE.items():
        value = getattr(config, name)
        if value <= reference:
            continue
        smaller = {name: reference}
        if name == "hidden_size":  # keep the head split valid
            smaller["num_attention_heads"] = 1
        count = parameter_count(replace(config, **smaller))
        if count < best_count:
            best, best_count = name, count
    return best


def check_fits(
    config: BertConfig,
    training: bool = False,
    device: torch.device | None = None,
    source: str = "the model config",
) -> None:
    """Refuse, in one line naming the field, a config whose parameters (and, when training, the
    gradients and optimizer state) need more memory than is available."""
    count = parameter_count(config)
    needed = count * (TRAINING_BYTES if training else FP32)
    available = available_bytes(device)
    if available is None or needed <= available:
        return
    field = _largest_field(config)
    what = "parameters, gradients and optimizer state" if training else "parameters"
    raise UserError(
        f"{source}: {field} = {getattr(config, field)} gives {count:,} parameters; their "
        f"{what} need {_gib(needed)}, more than the {_gib(available)} of memory available"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
