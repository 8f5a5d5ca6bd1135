"""Evaluate a model on a dataset: MLM loss / accuracy / perplexity and NSP loss / accuracy.

NSP is scored only for a model trained with it: a checkpoint without an NSP head (transformers'
`BertForMaskedLM`, what run_mlm.py and most Hub MLMs save) or from an MLM-only run (`pretrain
--no-nsp`, recorded in its trainer_state.json) reports no NSP keys, and `"nsp": false`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from bertcli.console import Reporter
from bertcli.data.blend import open_shard_data
from bertcli.data.datasets import TextDataset, collate
from bertcli.errors import UserError
from bertcli.hf import load_pretrained
from bertcli.metrics import EvalSums
from bertcli.model import BertForPreTraining, masked_positions
from bertcli.tokenizer import BertTokenizer, load_tokenizer
from bertcli.train.runtime import Runtime
from bertcli.unpad import Unpadding


@torch.no_grad()
def evaluate_model(
    model: BertForPreTraining,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    runtime: Runtime,
    max_batches: int | None = None,
    reporter: Reporter | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    nsp: bool = True,
) -> dict[str, float | int] | None:
    """Deterministic pass over `dataset` (in index order, split across ranks); `nsp=False`
    leaves the NSP metrics out (an MLM-only model). With `should_stop`, asked before each batch:
    True ends the pass early and it returns None (under DDP, when any rank stopped)."""
    was_training = model.training
    model.eval()
    indices = list(range(runtime.rank, len(dataset), runtime.world_size))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if max_batches:
        batches = batches[:max_batches]
    sums = EvalSums(runtime.device)
    reporter = reporter or Reporter()
    reporter.start("Evaluating", total=len(batches), unit="batches")
    stopped = False
    for batch_indices in batches:
        if should_stop is not None and should_stop():
            stopped = True
            break
        batch = collate([dataset[i] for i in batch_indices])
        # positions and the unpadding record come from the CPU batch: no sync, static head
        if "masked_lm_positions" not in batch:
            batch["masked_lm_positions"] = masked_positions(batch["masked_lm_labels"])
        record = Unpadding.from_mask(batch["attention_mask"])
        record = None if record.dense else record.to(runtime.device, non_blocking=True)
        batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
        with runtime.autocast():
            out = model(
                batch["input_ids"],
                batch["token_type_ids"],
                batch["attention_mask"],
                masked_lm_labels=batch["masked_lm_labels"],
                masked_lm_positions=batch["masked_lm_positions"],
                unpadding=record,
            )  # label_smoothing stays 0: evaluation reports the plain loss and perplexity
        sums.add_batch(
            out.mlm_logits.flatten(0, 1),  # (B * P, V)
            out.mlm_targets.flatten(),  # (B * P,), -100 at empty slots: not counted
            out.nsp_logits,
            batch["next_sentence_labels"],
        )
        reporter.advance(1)
    reporter.finish()
    if runtime.distributed:
        dist.all_reduce(sums.values)
        if should_stop is not None:  # every rank returns the same answer
            flag = torch.tensor([float(stopped)], device=runtime.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stopped = bool(flag.item())
    model.train(was_training)
    return None if stopped else sums.result(nsp=nsp)


def checkpoint_tokenizer(checkpoint: Path, tokenizer: Path | None) -> BertTokenizer:
    """The tokenizer given, else the one saved in the checkpoint."""
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if (checkpoint / "tokenizer.json").is_file() or (checkpoint / "vocab.txt").is_file():
        return load_tokenizer(checkpoint)
    raise UserError(f"{checkpoint} holds no tokenizer; pass --tokenizer DIR for text data")


def check_vocab(tokenizer: BertTokenizer, vocab_size: int, source: str) -> None:
    """A tokenizer must produce exactly the ids the model's embedding table has."""
    if tokenizer.vocab_size != vocab_size:
        raise UserError(
            f"tokenizer has {tokenizer.vocab_size} tokens but {source} has vocab_size "
            f"{vocab_size}; use the tokenizer the model was trained with"
        )


def check_positions(length: int, max_position_embeddings: int, what: str, source: str) -> None:
    """The one check that sequences fit a model's position table (pretrain and evaluate)."""
    if length > max_position_embeddings:
        raise UserError(
            f"{what} {length} exceeds max_position_embeddings {max_position_embeddings} of "
            f"{source}; use sequences of at most {max_position_embeddings} tokens or a model "
            "with more positions"
        )


def evaluate_checkpoint(
    checkpoint: str | Path,
    runtime: Runtime,
    data_text: list[Path] | None = None,
    data_preprocessed: Path | list[Path] | None = None,
    tokenizer: Path | None = None,
    batch_size: int = 32,
    max_seq_length: int = 128,
    seed: int = 12345,
    max_batches: int | None = None,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    whole_word_masking: bool = False,
    reporter: Reporter | None = None,
    nsp: bool | None = None,
) -> dict[str, float | int | bool]:
    """Load any bertcli or transformers BERT directory, or a published checkpoint by name
    (fetched into the Hugging Face cache on first use), and evaluate it.

    `nsp` None: the checkpoint's mode (see `checkpoint_nsp`); False scores MLM only, on packed
    text for text data, as `pretrain --no-nsp` trains.
    """
    from bertcli.hub import resolve_model

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if (data_text is None) == (data_preprocessed is None):
        raise UserError("give exactly one of --data-text PATH or --data-preprocessed DIR")
    name = str(checkpoint)
    checkpoint = resolve_model(name, "--checkpoint", runtime, reporter)
    model = load_pretrained(checkpoint, allow_missing_heads=True).to(runtime.device)
    nsp = checkpoint_nsp(checkpoint, model.fresh_heads, name, nsp)
    config = model.config
    if data_preprocessed is not None:
        dataset = open_shard_data(  # several directories: every example of each, once
            data_preprocessed if isinstance(data_preprocessed, list) else [data_preprocessed],
            flag="--data-preprocessed",
            weights=False,
        )
        check_positions(
            dataset.max_seq_length,
            config.max_position_embeddings,
            "--data-preprocessed holds sequences of",
            name,
        )
        dataset.check_vocab(config.vocab_size)
    else:
        check_positions(max_seq_length, config.max_position_embeddings, "--max-seq-length", name)
        tok = checkpoint_tokenizer(checkpoint, tokenizer)
        check_vocab(tok, config.vocab_size, name)
        dataset = TextDataset(
            data_text,
            tok,
            max_seq_length=max_seq_length,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_masking=whole_word_masking,
            seed=seed,
            flag="--data-text",
            nsp=nsp,
        )
    result = evaluate_model(model, dataset, batch_size, runtime, max_batches, reporter, nsp=nsp)
    return {**result, "nsp": nsp}


def checkpoint_nsp(
    checkpoint: Path, fresh_heads: list[str], name: str, requested: bool | None
) -> bool:
    """Whether to score NSP: never without an NSP head, else as asked, else as trained.

    A checkpoint without the MLM head (an encoder-only `BertModel`) cannot be scored at all.
    """
    from bertcli.train.checkpoint import load_summary

    if any(h.startswith("cls.predictions.") for h in fresh_heads):
        raise UserError(
            f"{name} has no MLM head (an encoder-only BertModel: no cls.predictions.* tensors); "
            f"continue pretraining it first (bertcli pretrain --init-from {name}) or fine-tune "
            "it on a task (bertcli finetune)"
        )
    nsp_heads = ("cls.seq_relationship.", "bert.pooler.")
    has_nsp_head = not any(h.startswith(nsp_heads) for h in fresh_heads)
    if requested and not has_nsp_head:
        raise UserError(f"--nsp: {name} has no NSP head (no cls.seq_relationship.* tensors)")
    if requested is not None:
        return requested
    trained = load_summary(checkpoint).get("nsp")
    return has_nsp_head and trained is not False  # unrecorded (transformers, old runs): NSP
