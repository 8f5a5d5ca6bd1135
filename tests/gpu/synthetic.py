"""Random pretraining examples in the datasets' layout, for GPU tests that need no corpus."""

from __future__ import annotations

import numpy as np
import torch

from bertcli.config import BertConfig
from bertcli.data.datasets import collate
from bertcli.model import IGNORE_INDEX


class SyntheticPretraining(torch.utils.data.Dataset):
    """`n` examples of `seq` tokens: a quarter of them padded to 3/4 length, round(15%) of the
    real tokens predicted (at most `max_pred`), as `PreprocessedDataset` yields them."""

    def __init__(self, n: int, seq: int, vocab: int, max_pred: int = 20, seed: int = 0):
        self.n, self.max_seq_length, self.vocab = n, seq, vocab
        self.max_pred, self.seed = max_pred, seed

    def __len__(self) -> int:
        return self.n

    def order(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        if not shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(i)])
        seq = self.max_seq_length
        real = (3 * seq) // 4 if i % 4 == 0 else seq
        ids = np.zeros(seq, dtype=np.int64)
        ids[:real] = rng.integers(5, self.vocab, real)
        types = np.zeros(seq, dtype=np.int64)
        types[real // 2 : real] = 1
        mask = np.zeros(seq, dtype=np.int64)
        mask[:real] = 1
        count = min(self.max_pred, max(1, round(0.15 * real)))
        chosen = np.sort(1 + rng.permutation(real - 1)[:count])  # never [CLS]
        labels = np.full(seq, IGNORE_INDEX, dtype=np.int64)
        labels[chosen] = ids[chosen]
        positions = np.zeros(self.max_pred, dtype=np.int64)
        positions[:count] = chosen
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "attention_mask": mask,
            "masked_lm_labels": labels,
            "masked_lm_positions": positions,
            "next_sentence_labels": np.array(int(rng.integers(0, 2)), dtype=np.int64),
        }

    def batch(self, start: int, size: int) -> dict[str, torch.Tensor]:
        """Examples start..start+size as one CPU batch."""
        return collate([self[i] for i in range(start, start + size)])


def small_config(vocab: int = 4096, **overrides) -> BertConfig:
    """mini (4 x 256, 4 heads) without dropout: runs compare deterministic computations."""
    fields = dict(vocab_size=vocab, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertConfig.from_preset("mini", **{**fields, **overrides})


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in fp32 on the CPU (norm-wise, so scale-free)."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def flat_grads(model: torch.nn.Module) -> torch.Tensor:
    """Every gradient, flattened into one fp32 CPU vector (zeros where a parameter has none)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().cpu().flatten()
        for p in model.parameters()
    ]
    return torch.cat(parts)
