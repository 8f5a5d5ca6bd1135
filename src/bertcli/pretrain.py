"""Assemble a pretraining run from its options: data, tokenizer, model, out dir, then train.

Everything here is resolution and checking (which files, which tokenizer, which config, resume
or not); the loop itself is `train.trainer.Trainer`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import time
from dataclasses import asdict
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bertcli.atomic import write_text_atomic
from bertcli.config import BertConfig, PretrainConfig
from bertcli.console import Reporter
from bertcli.data.blend import describe_sources, open_shard_data
from bertcli.data.datasets import TextDataset
from bertcli.data.token_cache import token_cache_dir
from bertcli.errors import UserError, writing
from bertcli.evaluate import check_positions, check_vocab
from bertcli.hf import load_config, load_pretrained
from bertcli.hub import resolve_model
from bertcli.model import BertForPreTraining
from bertcli.sizing import check_fits
from bertcli.tokenizer import (
    BertTokenizer,
    load_tokenizer,
    tokenizer_from_options,
    train_tokenizer,
)
from bertcli.train.checkpoint import STATE_FILE, resolve_checkpoint
from bertcli.train.rundir import check_shared_file, claim_run_dir
from bertcli.train.runtime import Runtime, init_runtime, run_environment, shutdown
from bertcli.train.trainer import Trainer
from bertcli.vocab_resize import VocabGrowth, grow_embeddings, plan_growth

DEFAULT_DOWNLOAD = Path("data") / "wikitext2"


def sample_corpus() -> tuple[Path, Path]:
    """The small WikiText-2 excerpt shipped inside the package."""
    root = Path(str(resources.files("bertcli") / "sample"))
    return root / "train.txt", root / "valid.txt"


def resolve_data(config: PretrainConfig, log: Reporter) -> tuple[list[Path], list[Path]]:
    """--train-data/--eval-data, else `bertcli download wikitext2`'s files, else the sample."""
    if config.train_data:
        return config.train_data, config.eval_data
    if config.data_mode == "preprocessed":
        raise UserError("--data-preprocessed needs --train-data DIR (made by bertcli preprocess)")
    if (DEFAULT_DOWNLOAD / "train.txt").is_file():
        log.log(f"no --train-data: using {DEFAULT_DOWNLOAD}/train.txt (bertcli download wikitext2)")
        valid = DEFAULT_DOWNLOAD / "valid.txt"
        return [DEFAULT_DOWNLOAD / "train.txt"], config.eval_data or (
            [valid] if valid.is_file() else []
        )
    train, valid = sample_corpus()
    log.log(
        "no --train-data and no downloaded corpus: using the small sample corpus in the package"
    )
    return [train], config.eval_data or [valid]


def resolve_init_from(
    value: str, runtime: Runtime | None = None, log: Reporter | None = None
) -> Path:
    """--init-from: a checkpoint dir, a run dir (its newest checkpoint), or a Hub model name
    (fetched on first use, rank 0 first; see `hub.resolve_model`)."""
    return resolve_model(value, "--init-from", runtime, log)


def _optimizer_checkpoint(value: str | None) -> Path | None:
    """--init-optimizer-from: a bertcli checkpoint (or run dir) with its trainer state."""
    if value is None:
        return None
    path = resolve_checkpoint(value)
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--init-optimizer-from {value}: no {STATE_FILE} there (only bertcli checkpoints "
            "carry optimizer state)"
        )
    return path


def _tokenizer(config: PretrainConfig, runtime: Runtime, out: Path, train_files, log, sources):
    """The tokenizer given, else the checkpoint's, else one built from the training text."""
    given = tokenizer_from_options(config.tokenizer, config.vocab_file)
    if given is not None:
        return given
    for source in sources:
        if source is not None and (
            (source / "tokenizer.json").is_file() or (source / "vocab.txt").is_file()
        ):
            return load_tokenizer(source)
    if config.data_mode == "preprocessed":
        return None
    built = out / "tokenizer"
    if runtime.is_main and not (built / "tokenizer.json").is_file():
        log.log(
            f"no --tokenizer: building a WordPiece vocabulary from the training text in {built}"
        )
        train_tokenizer(
            "wordpiece",
            train_files,
            config.vocab_size,
            built,
            input_format=config.input_format,
            reporter=log,
            exact=False,
        )
    check_shared_file(runtime, built / "tokenizer.json")  # rank 0 built it: all must see it
    return load_tokenizer(built)


def _model_config(config: PretrainConfig, tokenizer: BertTokenizer | None, init_dir, resume_dir):
    overrides = {k: v for k, v in config.model_overrides.items() if v is not None}
    if resume_dir is not None:
        return load_config(resume_dir)
    if init_dir is not None:
        if overrides:
            raise UserError("--init-from fixes the architecture; drop the model size options")
        return load_config(init_dir)
    if config.config_file is not None:
        model_config = BertConfig.load(config.config_file).with_overrides(**overrides)
    else:
        if tokenizer is None:
            raise UserError(
                "--data-preprocessed: give --tokenizer/--vocab-file (the one used to preprocess) "
                "or --config-file, so the vocabulary size is known"
            )
        model_config = BertConfig.from_preset(config.preset, **overrides)
        model_config = model_config.with_overrides(vocab_size=tokenizer.vocab_size)
    if tokenizer is not None:
        model_config = model_config.with_overrides(pad_token_id=tokenizer.pad_id)
    return model_config


def _vocab_growth(tokenizer, init_dir, resume_dir, vocab_size: int) -> VocabGrowth | None:
    """How --tokenizer extends the --init-from checkpoint's vocabulary (None: it does not, and
    check_vocab judges the sizes as for any tokenizer). A resumed run has grown already."""
    if tokenizer is None or init_dir is None or resume_dir is not None:
        return None
    return plan_growth(tokenizer, init_dir, vocab_size)


def _with_dropout(model: BertForPreTraining, config: PretrainConfig) -> BertForPreTraining:
    """--hidden-dropout/--attention-dropout over any model (fresh, --init-from or resumed)."""
    overrides = {
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
    }
    if all(v is None for v in overrides.values()):
        return model
    # dropout changes no weight: rebuild with the new config and carry the weights over
    rebuilt = BertForPreTraining(model.config.with_overrides(**overrides))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.fresh_heads = getattr(model, "fresh_heads", [])
    return rebuilt


def _out_dir(config: PretrainConfig, runtime: Runtime) -> Path:
    if config.out is not None:
        return Path(config.out)
    stamp = [time.strftime("%Y-%m-%d_%H-%M-%S")]
    if runtime.distributed:
        dist.broadcast_object_list(stamp, src=0)
    return Path("outputs") / "bert_lm" / stamp[0]


def run_pretraining(
    config: PretrainConfig, reporter: Reporter | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Resolve everything, then train; returns the final metrics and checkpoint path.

    Without a `runtime` one is made from the config and shut down here; a caller that passes
    its own (to ask it `is_main` afterwards) shuts it down itself.
    """
    owned = runtime is None
    runtime = runtime or init_runtime(config.device, config.precision)
    log = reporter if (reporter is not None and runtime.is_main) else Reporter()
    try:
        # a full disk anywhere in the run (metrics, cache, run.json) names at least the run dir
        with writing(config.out or "outputs"), contextlib.ExitStack() as cleanup:
            return _run(config, runtime, log, cleanup)
    finally:
        gc.collect()  # DDP's reducer must go before its process group (gloo aborts otherwise)
        if owned:
            shutdown(runtime)


def _report_skips(data: TextDataset, log: Reporter) -> TextDataset:
    """One line for what tokenizing left out, so a short corpus is not a silent surprise."""
    stats = data.stats
    if stats.skipped_documents or stats.invalid_utf8_lines or stats.bad_json_lines:
        log.log(
            f"text: {stats.documents} documents, {stats.tokens} tokens; skipped "
            f"{stats.skipped_documents} documents under 2 tokens, {stats.bad_json_lines} JSON "
            f"lines without text; {stats.invalid_utf8_lines} lines had invalid UTF-8 (replaced)"
        )
    return data


def _text_data(runtime: Runtime, files, tokenizer, flag: str, log: Reporter, options: dict):
    """Rank 0 tokenizes into the run's token store while the other ranks wait (as long as it
    takes: a key in the rendezvous store, not a collective with a timeout); then every rank
    maps the same store, so a node holds one copy in its page cache."""
    if not runtime.distributed:
        return _report_skips(TextDataset(files, tokenizer, flag=flag, reporter=log, **options), log)
    store = dist.distributed_c10d._get_default_store()
    # per launch attempt: a key left by a failed attempt must not release the next one's ranks
    key = f"bertcli/token-store{flag}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if runtime.is_main:
        try:
            data = TextDataset(files, tokenizer, flag=flag, reporter=log, **options)
        except BaseException:
            store.set(key, "failed")
            raise
        store.set(key, f"ok:{data.store_dir.resolve()}")
        return _report_skips(data, log)
    store.wait([key], timedelta(days=30))
    answer = store.get(key).decode()
    if not answer.startswith("ok:"):
        raise UserError(f"{flag}: rank 0 failed to tokenize the corpus (its error says why)")
    # rank 0's store by its path: no rank hashes the corpus files again
    return TextDataset(files, tokenizer, flag=flag, store_dir=answer[3:], **options)


def _run(
    config: PretrainConfig, runtime: Runtime, log: Reporter, cleanup: contextlib.ExitStack
) -> dict[str, Any]:
    if config.push_to:  # no token or HF_HUB_OFFLINE: say so now, not after the training
        from bertcli.hub import check_push_target

        check_push_target(config.push_to, "--push-to")
    out = _out_dir(config, runtime)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    # rank 0 locks the run dir, sweeps debris and picks the checkpoint; every rank agrees
    lock, resume_dir = claim_run_dir(out, runtime, log, config.resume)
    if lock is not None:
        cleanup.callback(lock.release)
    init_dir = resolve_init_from(config.init_from, runtime, log) if config.init_from else None
    train_files, eval_files = resolve_data(config, log)
    tokenizer = _tokenizer(config, runtime, out, train_files, log, [resume_dir, init_dir])
    model_config = _model_config(config, tokenizer, init_dir, resume_dir)
    growth = _vocab_growth(tokenizer, init_dir, resume_dir, model_config.vocab_size)
    if growth is not None:  # an extended tokenizer: the checkpoint grows to it (FVT rows)
        model_config = model_config.with_overrides(vocab_size=growth.new_size)
    if tokenizer is not None:
        check_vocab(tokenizer, model_config.vocab_size, "the model config")

    torch.manual_seed(config.train.seed)
    # where the position table comes from, for the one-line length error
    source = str(
        resume_dir or config.init_from or config.config_file or f"--preset {config.preset}"
    )
    if config.data_mode == "text":
        check_positions(
            config.max_seq_length, model_config.max_position_embeddings, "--max-seq-length", source
        )
        options = dict(
            max_seq_length=config.max_seq_length,
            masked_lm_prob=config.masked_lm_prob,
            max_predictions_per_seq=config.max_predictions_per_seq,
            short_seq_prob=config.short_seq_prob,
            whole_word_masking=config.whole_word_masking,
            seed=config.train.seed,
            input_format=config.input_format,
            cache_dir=token_cache_dir(config.cache_dir),  # shared by runs: token_cache.py
        )
        options["nsp"] = config.train.nsp  # --no-nsp packs text (no pairs)
        train_data = _text_data(runtime, train_files, tokenizer, "--train-data", log, options)
        eval_data = (
            _text_data(runtime, eval_files, tokenizer, "--eval-data", log, options)
            if eval_files
            else None
        )
    else:
        # every directory given, blended (DIR:WEIGHT) when there are several: see data/blend.py
        train_data = open_shard_data(train_files, seed=config.train.seed, flag="--train-data")
        eval_data = (
            open_shard_data(eval_files, flag="--eval-data", weights=False) if eval_files else None
        )
        for data in (train_data, eval_data):
            if data is not None:
                check_positions(
                    data.max_seq_length,
                    model_config.max_position_embeddings,
                    "the shards hold sequences of",
                    source,
                )
            if data is not None:  # headers now, before any step; ids as each shard opens
                data.check_vocab(model_config.vocab_size)

    # weights, gradients and optimizer state must fit, before any of them is allocated
    check_fits(model_config, training=True, device=runtime.device, source=source)
    if resume_dir is not None:
        model = load_pretrained(resume_dir)
    elif init_dir is not None:
        model = load_pretrained(init_dir, allow_missing_heads=True)
        if model.fresh_heads:
            log.log(
                f"--init-from has no pretraining heads; initialised {len(model.fresh_heads)} "
                "tensors (pooler, MLM, NSP) fresh"
            )
        if growth is not None:
            model = grow_embeddings(model, growth)
            log.log(growth.summary())
    else:
        model = BertForPreTraining(model_config)
    model = _with_dropout(model, config)
    model_config = model.config
    model.to(runtime.device)
    torch.manual_seed(config.train.seed + runtime.rank)

    device_names = _device_names(runtime)  # a collective: every rank names its device
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        model_config.save(out / "bert-config.json")
        sources = {  # the shard directories, weights and examples per epoch actually used
            "train_sources": describe_sources(train_data),
            "eval_sources": describe_sources(eval_data),
            "device_names": device_names,
            # --init-from by published name (not a local directory): the card's base_model
            "base_model": (
                config.init_from
                if config.init_from and not resolve_checkpoint(config.init_from).exists()
                else None
            ),
            "corpus": _corpus_facts(train_files, eval_files, train_data, eval_data),
            "tokenizer_extension": _tokenizer_extension(tokenizer),
        }
        _write_run_json(out, config, runtime, model, train_files, eval_files, tokenizer, sources)
    runtime.barrier()
    trainer = Trainer(
        config.train,
        model,
        train_data,
        runtime,
        out,
        tokenizer=tokenizer,
        eval_data=eval_data,
        reporter=log,
        resume_from=resume_dir,
        init_optimizer_from=_optimizer_checkpoint(config.init_optimizer_from),
        run_facts={  # what --resume may not change silently (with the batch size, optimizer …)
            "train_data": [str(Path(p).resolve()) for p in train_files],
            "max_seq_length": getattr(train_data, "max_seq_length", config.max_seq_length),
        },
    )
    started, first_step = time.perf_counter(), trainer.step  # resumed: the checkpoint's step
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    result["out"] = str(out)
    result["total_steps"] = trainer.total_steps
    if runtime.is_main:
        _publish(config, out, trainer, result, time.perf_counter() - started, first_step, log)
    return result


def _publish(config, out: Path, trainer, result: dict, wall_s: float, first_step: int, log) -> None:
    """Rank 0, after the final save: record how the run ended in run.json, write the model
    card into the final checkpoint, and push it when --push-to asks."""
    from bertcli.modelcard import run_metrics, write_model_card

    cfg = trainer.config
    global_batch = cfg.batch_size * cfg.batches_per_step * trainer.runtime.world_size
    seq_len = getattr(trainer.train_data, "max_seq_length", config.max_seq_length)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    run["result"] = {
        "steps": trainer.step,
        "steps_this_invocation": trainer.step - first_step,
        "global_batch": global_batch,
        "sequences_seen": trainer.step * global_batch,
        "token_positions_seen": trainer.step * global_batch * seq_len,
        "warmup_steps": trainer.warmup,
        "wall_time_s": round(wall_s, 3),  # this invocation's (a resumed run: since --resume)
        "resumed_from_step": first_step or None,
        "stopped_early": result.get("stopped_early", False),
        "checkpoint": result["checkpoint"],
    }
    write_text_atomic(out / "run.json", json.dumps(run, indent=2) + "\n")
    recorded = run_metrics(out, trainer.step)  # a resumed run with nothing left: the file's
    metrics = {key: result.get(key) or recorded[key] for key in ("train", "eval")}
    card = write_model_card(result["checkpoint"], run, metrics, repo_id=config.push_to)
    result["model_card"] = str(card)
    if config.push_to and result.get("stopped_early"):
        log.log(  # a half-trained model is not what --push-to asked for
            f"not pushing to {config.push_to}: stopped at step {trainer.step} before the end; "
            f"--resume, or `bertcli push {out} {config.push_to}` to publish it as it is"
        )
    elif config.push_to:
        from bertcli.hub import push_checkpoint

        pushed = push_checkpoint(result["checkpoint"], config.push_to, reporter=log)
        log.log(f"pushed {result['checkpoint']} to {pushed.commit_url}")
        result["pushed"] = pushed.commit_url


def _device_names(runtime: Runtime) -> list[str]:
    """Each rank's device by name (the GPU model, or the CPU's), gathered in rank order."""
    if runtime.device.type == "cuda":
        name = torch.cuda.get_device_name(runtime.device)
    else:
        name = _cpu_name()
    if not runtime.distributed:
        return [name]
    names: list[str | None] = [None] * runtime.world_size
    dist.all_gather_object(names, name)
    return [str(n) for n in names]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return f"CPU ({platform.processor() or platform.machine()})"


def _corpus_facts(train_files, eval_files, train_data, eval_data) -> dict[str, Any]:
    """File names and sizes, and (text data) the token counts under the run's tokenizer."""

    def sizes(files) -> list[dict[str, Any]]:
        return [
            {"path": str(p), "bytes": os.path.getsize(p) if Path(p).is_file() else None}
            for p in files
        ]

    facts: dict[str, Any] = {"train_files": sizes(train_files), "eval_files": sizes(eval_files)}
    for split, data in (("train", train_data), ("eval", eval_data)):
        stats = getattr(data, "stats", None)
        if stats is not None:
            facts[f"{split}_tokens"] = int(stats.tokens)
            facts[f"{split}_documents"] = int(stats.documents)
    return facts


def _tokenizer_extension(tokenizer: BertTokenizer | None) -> dict[str, Any] | None:
    """A summary of the tokenizer's `extension.json` (build-tokenizer --extend), if it has one:
    the base's identity, how many pieces were added and how many took `[unused*]` slots."""
    if tokenizer is None or not tokenizer.path:
        return None
    path = Path(tokenizer.path)
    path = (path if path.is_dir() else path.parent) / "extension.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pieces = data["pieces"]
        base = dict(data["base"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no extension (or not one we can read): the card says nothing of it
    return {
        "base": base,  # source (name or path), vocab_sha256, vocab_size
        "added": len(pieces),
        "slots": sum(1 for p in pieces if isinstance(p, dict) and p.get("slot") is not None),
        "vocab_size": data.get("vocab_size"),
    }


def _write_run_json(
    out, config, runtime, model, train_files, eval_files, tokenizer, sources=None
) -> None:
    data = {
        **run_environment(runtime),
        "parameters": model.num_parameters(),
        "train_files": [str(p) for p in train_files],
        "eval_files": [str(p) for p in eval_files],
        "command": list(config.command),
        **(sources or {}),
        "tokenizer": str(tokenizer.path) if tokenizer is not None and tokenizer.path else None,
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "model_config": model.config.to_dict(),
    }
    write_text_atomic(out / "run.json", json.dumps(data, indent=2) + "\n")
