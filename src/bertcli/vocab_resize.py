"""Grow a checkpoint to an extended vocabulary, each new row the mean of its base pieces' rows.

`pretrain --init-from CKPT --tokenizer EXTENDED` calls `plan_growth` to decide whether the
tokenizer extends the checkpoint's vocabulary, and `grow_embeddings` to resize the word
embeddings and the MLM decoder bias. A new or re-used ([unused*] slot) row starts as the mean of
the checkpoint's rows for the piece's tokenization under the base vocabulary, and its decoder
bias as the mean of theirs: Fast Vocabulary Transfer (Gee et al. 2022), which keeps the model's
step-0 predictions close to the base's where a random row would be noise. The decoder weight is
the word-embedding matrix itself (tied in `model.py`), so it grows with it.

The relation is accepted in two forms: the tokenizer's `extension.json` names the checkpoint's
vocabulary by sha256 (what `build-tokenizer --extend` writes), or, without that file, the new
vocabulary equals the checkpoint's except for filled `[unused*]` slots and pieces appended after
the last id (their base tokenization is then computed here). Anything else is not an extension,
and the callers' size check refuses it as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bertcli.errors import UserError
from bertcli.model import BertForPreTraining
from bertcli.tokenizer import TOKENIZER_FILE, VOCAB_FILE, BertTokenizer, load_tokenizer
from bertcli.vocab_extension import (
    PREFIX,
    is_slot,
    read_extension,
    vocab_sha256,
    vocab_tokens,
    wordpiece,
)

WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
MLM_BIAS = "mlm_bias"


@dataclass
class VocabGrowth:
    """How an extended vocabulary maps onto a checkpoint's."""

    old_size: int
    new_size: int
    rows: dict[int, list[int]]  # new or re-used id -> checkpoint ids of its base tokenization
    source: str  # "extension.json" or "vocabulary comparison"

    @property
    def filled(self) -> int:
        return sum(1 for i in self.rows if i < self.old_size)

    @property
    def appended(self) -> int:
        return self.new_size - self.old_size

    def summary(self) -> str:
        """The one info line pretrain prints."""
        return (
            f"--tokenizer extends the checkpoint's vocabulary ({self.source}): {self.old_size} -> "
            f"{self.new_size} tokens, {self.filled} rows of unused slots re-used and "
            f"{self.appended} appended, each initialised as the mean of its base tokenization's "
            "rows (FVT)"
        )


def checkpoint_vocab(checkpoint: Path) -> list[str] | None:
    """The tokens of the tokenizer saved in a checkpoint directory, None when it has none."""
    checkpoint = Path(checkpoint)
    if not ((checkpoint / TOKENIZER_FILE).is_file() or (checkpoint / VOCAB_FILE).is_file()):
        return None
    return vocab_tokens(load_tokenizer(checkpoint))


def plan_growth(tokenizer: BertTokenizer, checkpoint: Path, vocab_size: int) -> VocabGrowth | None:
    """The growth from the checkpoint (`vocab_size` rows) to `tokenizer`, or None when the
    tokenizer does not extend it (the same vocabulary, or one the size check will judge)."""
    new = vocab_tokens(tokenizer)
    old = checkpoint_vocab(checkpoint)
    if old is not None and len(old) != vocab_size:
        return None  # the checkpoint's own tokenizer and weights disagree: not ours to judge
    if old == new:
        return None
    record = read_extension(tokenizer.path) if tokenizer.path is not None else None
    if record is not None:
        return _from_record(record, tokenizer, new, old, checkpoint, vocab_size)
    if old is None or not _extends(old, new):
        return None
    base = {t: i for i, t in enumerate(old)}
    max_len = max(len(t) - len(PREFIX) if t.startswith(PREFIX) else len(t) for t in old)
    rows = {}
    for i, token in enumerate(new):
        if i < len(old) and token == old[i]:
            continue
        continuation = token.startswith(PREFIX)
        text = token[len(PREFIX) :] if continuation else token
        pieces = wordpiece(text, base, max_len, continuation) or ["[UNK]"]
        rows[i] = [base[p] for p in pieces]
    return VocabGrowth(len(old), len(new), rows, "vocabulary comparison")


def _extends(old: list[str], new: list[str]) -> bool:
    """`new` is `old` with some [unused*] slots replaced and tokens appended."""
    if len(new) < len(old):
        return False
    return all(a == b or is_slot(a) for a, b in zip(old, new))


def _from_record(record: dict, tokenizer, new, old, checkpoint, vocab_size) -> VocabGrowth:
    base = record["base"]
    where = f"--tokenizer {tokenizer.path}"
    if old is None:
        raise UserError(
            f"{where} extends the vocabulary {base['vocab_sha256'][:12]}… ({base['vocab_size']} "
            f"tokens), but {checkpoint} holds no tokenizer to check it against; give a "
            "checkpoint saved with its tokenizer"
        )
    sha = vocab_sha256(old)
    if sha != base["vocab_sha256"]:
        raise UserError(
            f"{where} extends the vocabulary {base['vocab_sha256'][:12]}… of {base['source']} "
            f"({base['vocab_size']} tokens), but {checkpoint} has the vocabulary {sha[:12]}… "
            f"({vocab_size} tokens); extend the checkpoint's own tokenizer (--extend {checkpoint})"
        )
    rows = {int(p["id"]): [int(i) for i in p["base_ids"]] for p in record["pieces"]}
    expected = list(old)
    for p in record["pieces"]:
        if p["id"] < len(old):
            expected[p["id"]] = p["piece"]
        else:
            expected.append(p["piece"])
    bad_ids = any(i < 0 or i >= len(old) for ids in rows.values() for i in ids)
    if expected != new or bad_ids or not _extends(old, new):
        raise UserError(
            f"{where}: its vocabulary does not match its extension.json (edited by hand?); "
            "build it again with build-tokenizer --extend"
        )
    return VocabGrowth(len(old), len(new), rows, "extension.json")


@torch.no_grad()
def grow_embeddings(
    model: BertForPreTraining, growth: VocabGrowth, init: str = "fvt"
) -> BertForPreTraining:
    """A copy of `model` with `growth.new_size` word embeddings and MLM biases; new and re-used
    rows by FVT (`init="fvt"`) or, for comparison, at random as BERT initialises embeddings
    (`init="random"`: normal(0, initializer_range) rows, zero bias)."""
    if init not in ("fvt", "random"):
        raise ValueError(f"init must be fvt or random, got {init!r}")
    if model.config.vocab_size != growth.old_size:
        raise UserError(
            f"the checkpoint has vocab_size {model.config.vocab_size}, expected {growth.old_size}"
        )
    grown = BertForPreTraining(model.config.with_overrides(vocab_size=growth.new_size))
    state = model.state_dict()
    old_rows, old_bias = state[WORD_EMBEDDINGS].float(), state[MLM_BIAS].float()
    rows = torch.empty(growth.new_size, old_rows.shape[1])
    rows[: growth.old_size] = old_rows
    bias = torch.zeros(growth.new_size)
    bias[: growth.old_size] = old_bias
    std = model.config.initializer_range
    for i, base_ids in growth.rows.items():
        if init == "fvt":
            rows[i] = old_rows[base_ids].mean(dim=0)
            bias[i] = old_bias[base_ids].mean()
        else:
            rows[i] = torch.randn(old_rows.shape[1]) * std
            bias[i] = 0.0
    state[WORD_EMBEDDINGS] = rows.to(state[WORD_EMBEDDINGS].dtype)
    state[MLM_BIAS] = bias.to(state[MLM_BIAS].dtype)
    grown.load_state_dict(state, strict=True)
    grown.fresh_heads = getattr(model, "fresh_heads", [])
    return grown
