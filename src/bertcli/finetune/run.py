"""Fine-tune a pretrained BERT on labelled data, once per seed, and keep the median seed.

The loop is the pretraining loop's pieces put together for a labelled batch: `Runtime`
(device, DDP, autocast, GradScaler), `build_optimizer`, `learning_rate`, the run-directory
lock and the atomic writers. One optimizer step takes the next `batch_size x batches_per_step x
world` examples of the epoch's order; each micro-batch's loss is its *sum* over the global
step's count (examples, or labelled tokens for NER, counted on the host from the step's
features), so any split over micro-batches and ranks computes the gradient of one big batch.
The last step of an epoch takes what is left (as transformers' Trainer, nothing is dropped).
Batches are padded to their own longest sequence, and the model runs on the real tokens only
(`unpad.py`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from bertcli.atomic import atomic_directory, remove_tree, write_text_atomic
from bertcli.config import FinetuneConfig
from bertcli.console import Reporter
from bertcli.errors import UserError, writing
from bertcli.evaluate import check_positions, check_vocab
from bertcli.finetune import data as fdata
from bertcli.finetune.metrics import entity_scores, sequence_metrics
from bertcli.finetune.tasks import Task, get_task
from bertcli.hf import build_task_model, load_config, save_task_model
from bertcli.hub import resolve_model
from bertcli.metrics import MetricsWriter
from bertcli.model import IGNORE_INDEX
from bertcli.sizing import check_fits
from bertcli.tokenizer import BertTokenizer, load_tokenizer
from bertcli.train.optim import build_optimizer
from bertcli.train.rundir import claim_run_dir
from bertcli.train.runtime import Runtime, init_runtime, run_environment, shutdown
from bertcli.train.schedules import learning_rate, warmup_steps_for
from bertcli.unpad import Unpadding

RUN_FILES = ("results.json", "model", "metrics.jsonl", "run.json", "seeds")


def sample_dir() -> Path:
    """The SST-2 excerpt shipped inside the package (train.tsv, dev.tsv)."""
    return Path(str(resources.files("bertcli") / "finetune" / "sample" / "sst2"))


@dataclass
class EvalSet:
    """One evaluation file, read and encoded."""

    suffix: str  # appended to metric names ("_mm": MNLI mismatched)
    path: Path
    items: list  # Example or Sentence, in file order
    targets: list  # label ids / values (per word lists for NER)
    features: list[dict]


@dataclass
class TaskData:
    """Everything the loop needs from the files."""

    task: Task
    labels: list[str]
    train: list[dict]
    train_path: Path
    evals: list[EvalSet]
    pad_id: int = 0  # the tokenizer's [PAD]: what batches are padded with

    @property
    def kind(self) -> str:
        """The model's head: per sequence or per token."""
        return "token" if self.task.kind == "ner" else "sequence"

    @property
    def regression(self) -> bool:
        return self.task.kind == "regression"


# ---- data ---------------------------------------------------------------------------------------


def resolve_files(config: FinetuneConfig, task: Task, log: Reporter) -> tuple[Path, list[Path]]:
    """--data-dir's task files, else --train-data/--eval-data, else the bundled SST-2 sample."""
    if config.train_data is not None:
        return Path(config.train_data), [Path(config.eval_data)]
    directory = config.data_dir
    if directory is None:
        if task.name != "sst2":
            raise UserError(f"--task {task.name}: give --data-dir DIR or --train-data/--eval-data")
        directory = sample_dir()
        log.log(f"no data given: using the small SST-2 sample in the package ({directory})")
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--data-dir {directory}: no such directory")
    ner = task.kind == "ner"
    train = directory / ("train.conll" if ner else task.train_file)
    evals = [directory / ("dev.conll" if ner else name) for name in task.eval_files]
    for path in (train, *evals):
        if not path.is_file():
            raise UserError(f"--data-dir {directory}: no {path.name} there")
    return train, evals


def load_task_data(
    config: FinetuneConfig, task: Task, tokenizer: BertTokenizer, log: Reporter
) -> TaskData:
    """Read, label and encode the training and evaluation files."""
    train_path, eval_paths = resolve_files(config, task, log)
    if task.kind == "ner":
        sentences = fdata.read_conll(train_path, "--train-data")
        labels = sorted({tag for s in sentences for tag in s.tags})
        train_ids = [_tag_ids(labels, s, train_path, "--train-data") for s in sentences]
        train = fdata.encode_sentences(tokenizer, sentences, train_ids, config.max_seq_length)
        evals = []
        for path in eval_paths:
            items = fdata.read_conll(path, "--eval-data")
            targets = [_tag_ids(labels, s, path, "--eval-data") for s in items]
            features = fdata.encode_sentences(tokenizer, items, targets, config.max_seq_length)
            evals.append(EvalSet("", path, items, targets, features))
        windows = len(train) - len(sentences)
        if windows:
            log.log(f"{windows} training sentences longer than --max-seq-length split in windows")
        return TaskData(task, labels, train, train_path, evals)
    columns = fdata.task_columns(
        task, config.text_column, config.text_pair_column, config.label_column, config.header
    )
    examples = fdata.read_examples(train_path, columns, "--train-data")
    labels = fdata.label_list(task, [e.label for e in examples])
    targets = fdata.label_ids(
        labels,
        [e.label for e in examples],
        [e.line for e in examples],
        train_path,
        "--train-data",
        task,
    )
    train = fdata.encode_examples(tokenizer, examples, targets, config.max_seq_length)
    evals = []
    for path, suffix in zip(eval_paths, task.eval_names if task.is_glue else ("",)):
        items = fdata.read_examples(path, columns, "--eval-data")
        ids = fdata.label_ids(
            labels, [e.label for e in items], [e.line for e in items], path, "--eval-data", task
        )
        features = fdata.encode_examples(tokenizer, items, ids, config.max_seq_length)
        evals.append(EvalSet(suffix, path, items, ids, features))
    return TaskData(task, labels, train, train_path, evals)


def _tag_ids(labels: list[str], sentence: fdata.Sentence, path: Path, flag: str) -> list[int]:
    ids = {tag: i for i, tag in enumerate(labels)}
    out = []
    for offset, tag in enumerate(sentence.tags):
        if tag not in ids:
            raise UserError(
                f"{flag} {path}:{sentence.line + offset}: tag {tag!r} is not in the training data"
            )
        out.append(ids[tag])
    return out


# ---- the loop -----------------------------------------------------------------------------------


def _steps(order_len: int, per_step: int, world: int) -> list[tuple[int, int]]:
    """(start, end) of each optimizer step in the epoch's order; a tail shorter than the
    number of processes is dropped (every rank needs an example)."""
    out = [(s, min(s + per_step, order_len)) for s in range(0, order_len, per_step)]
    if out and out[-1][1] - out[-1][0] < world:
        out.pop()
    return out


def _count(features: list[dict], token_level: bool) -> int:
    """What a step's loss is the mean over: examples, or labelled tokens for NER."""
    if not token_level:
        return len(features)
    return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in features)


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        reduction="sum",
        ignore_index=IGNORE_INDEX,
    )


def _device_batch(batch: dict, runtime: Runtime) -> tuple[dict, Unpadding | None]:
    """The batch on the device, with the unpadding record built on the CPU (no host sync)."""
    record = Unpadding.from_mask(batch["attention_mask"])
    record = None if record.dense else record.to(runtime.device, non_blocking=True)
    return {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}, record


def train_model(
    model: torch.nn.Module,
    data: TaskData,
    config: FinetuneConfig,
    runtime: Runtime,
    seed: int,
    log: Reporter,
    metrics: MetricsWriter | None,
    on_epoch=None,
) -> dict[str, Any]:
    """Fine-tune `model` in place; `on_epoch(epoch, step)` evaluates after each epoch."""
    world, k = runtime.world_size, config.batches_per_step
    per_step = config.batch_size * k * world
    token_level = data.kind == "token"
    net: torch.nn.Module = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = build_optimizer(
        config.optimizer,
        model,
        config.lr,
        config.weight_decay,
        (config.beta1, config.beta2),
        runtime.device.type,
        eps=config.eps,
    )
    scaler = runtime.grad_scaler()
    steps_per_epoch = len(_steps(len(data.train), per_step, world))
    if steps_per_epoch == 0:
        raise UserError(f"the training data has {len(data.train)} examples: too few")
    total = steps_per_epoch * config.num_epochs
    warmup = warmup_steps_for(total, None, config.warmup_ratio)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed + runtime.rank)  # dropout differs per rank, as in pretraining
    log.start(f"Fine-tuning {data.task.name} (seed {seed})", total=total, unit="steps")
    step, trained, train_time = 0, 0, 0.0
    window_loss, window_steps = 0.0, 0
    model.train()
    for epoch in range(config.num_epochs):
        order = torch.randperm(
            len(data.train), generator=torch.Generator().manual_seed(seed + epoch)
        ).tolist()
        started = time.perf_counter()
        for start, end in _steps(len(order), per_step, world):
            chunk = [data.train[i] for i in order[start:end]]
            count = max(1, _count(chunk, token_level))
            mine = chunk[runtime.rank :: world]
            micro = [mine[i::k] for i in range(k) if mine[i::k]]
            total_loss = torch.zeros((), device=runtime.device)
            for i, features in enumerate(micro):
                batch, record = _device_batch(
                    fdata.collate_features(features, data.pad_id, data.regression), runtime
                )
                last = i == len(micro) - 1
                sync = (
                    net.no_sync() if (not last and net is not model) else contextlib.nullcontext()
                )
                with sync:
                    with runtime.autocast():
                        out = net(
                            batch["input_ids"],
                            batch["token_type_ids"],
                            batch["attention_mask"],
                            unpadding=record,
                        )
                    loss = _loss_sum(out.logits, batch["labels"], data.regression) / count
                    scaler.scale(loss * world).backward()  # DDP averages: x world = the sum
                total_loss += loss.detach()
            lr = learning_rate(config.lr_policy, step, config.lr, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            scaler.unscale_(optimizer)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            trained += len(chunk)
            if runtime.distributed:
                torch.distributed.all_reduce(total_loss)
            window_loss += float(total_loss)
            window_steps += 1
            log.advance(1, loss=window_loss / window_steps, lr=lr)
            if step % config.log_every == 0 or step == total:
                row = {
                    "step": step,
                    "epoch": epoch,
                    "seed": seed,
                    "loss": window_loss / window_steps,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                }
                if metrics is not None:
                    metrics.write(row, prefix=_prefix(config, seed, "train"))
                log.status(loss=row["loss"], lr=lr)
                window_loss, window_steps = 0.0, 0
        train_time += time.perf_counter() - started
        if on_epoch is not None:
            on_epoch(epoch, step)
            model.train()
    log.finish()
    return {
        "steps": step,
        "train_time_s": train_time,
        "examples_per_s": trained / max(train_time, 1e-9),
    }


def _prefix(config: FinetuneConfig, seed: int, split: str) -> str:
    """TensorBoard tags: one curve per seed when there are several."""
    return split if config.seeds == 1 else f"seed_{seed}/{split}"


# ---- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: torch.nn.Module, features: list[dict], data: TaskData, batch_size: int, runtime: Runtime
) -> list[torch.Tensor]:
    """Logits of each feature, in order: (num_labels,) per sequence, (T, num_labels) per
    window (its real tokens only)."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        batch, record = _device_batch(
            fdata.collate_features(chunk, data.pad_id, data.regression), runtime
        )
        with runtime.autocast():
            logits = (
                model(
                    batch["input_ids"],
                    batch["token_type_ids"],
                    batch["attention_mask"],
                    unpadding=record,
                )
                .logits.float()
                .cpu()
            )
        for i, f in enumerate(chunk):
            out.append(logits[i, : len(f["input_ids"])] if data.kind == "token" else logits[i])
    model.train(was_training)
    return out


def evaluate_set(
    model: torch.nn.Module, eval_set: EvalSet, data: TaskData, batch_size: int, runtime: Runtime
) -> tuple[dict[str, float], list[dict]]:
    """Metrics (names with the set's suffix) and prediction rows of one evaluation file."""
    logits = predict(model, eval_set.features, data, batch_size, runtime)
    if data.kind == "token":
        predicted: list[list[int]] = [[] for _ in eval_set.items]
        for feature, window in zip(eval_set.features, logits):
            predicted[feature["sentence"]] += window[feature["starts"]].argmax(-1).tolist()
        gold = [[data.labels[t] for t in tags] for tags in eval_set.targets]
        tags = [[data.labels[t] for t in p] for p in predicted]
        scores = entity_scores(gold, tags)
        rows = [
            {"index": i, "tokens": s.tokens, "labels": s.tags, "predictions": p}
            for i, (s, p) in enumerate(zip(eval_set.items, tags))
        ]
    else:
        stacked = torch.stack(logits)
        if data.regression:
            values = stacked.squeeze(-1).tolist()
            shown = values
        else:
            values = stacked.argmax(-1).tolist()
            shown = [data.labels[v] for v in values]
        scores = sequence_metrics(data.task.metrics, eval_set.targets, values)
        rows = [
            {"index": i, "label": e.label, "prediction": p}
            for i, (e, p) in enumerate(zip(eval_set.items, shown))
        ]
    if eval_set.suffix:
        for row in rows:
            row["split"] = eval_set.path.stem
    return {f"{k}{eval_set.suffix}": v for k, v in scores.items()}, rows


def evaluate_all(model, data: TaskData, config: FinetuneConfig, runtime: Runtime):
    """Metrics of every eval set (MNLI: matched, then mismatched) and their prediction rows."""
    scores: dict[str, float] = {}
    rows: list[dict] = []
    batch = config.eval_batch_size or config.batch_size
    for eval_set in data.evals:
        found, set_rows = evaluate_set(model, eval_set, data, batch, runtime)
        scores.update(found)
        rows += set_rows
    return scores, rows


# ---- the command --------------------------------------------------------------------------------


def _refuse_other_run(out: Path, runtime: Runtime) -> None:
    error = None
    if runtime.is_main and out.is_dir():
        held = [name for name in RUN_FILES if (out / name).exists()]
        if (out / "checkpoints").is_dir():
            held.append("checkpoints")
        if held:
            error = f"--out {out} already holds a run ({', '.join(held)}); pass a new --out"
    runtime.check_all(runtime.from_main(error))


def finetune_tokenizer(tokenizer: Path | None, init_dir: Path, init_from: str) -> BertTokenizer:
    """--tokenizer, else the checkpoint's own (`load_tokenizer` switches off the padding and
    truncation a `tokenizer.json` may carry: batches pad themselves, and pairs are truncated
    here, longest first)."""
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif (init_dir / "tokenizer.json").is_file() or (init_dir / "vocab.txt").is_file():
        tok = load_tokenizer(init_dir)
    else:
        raise UserError(f"--init-from {init_from} holds no tokenizer; pass --tokenizer DIR")
    return tok


def run_finetune(
    config: FinetuneConfig, reporter: Reporter | None = None, runtime: Runtime | None = None
) -> dict[str, Any]:
    """Fine-tune once per seed; write model/, results.json, eval_predictions.jsonl, metrics."""
    owned = runtime is None
    runtime = runtime or init_runtime(config.device, config.precision)
    log = reporter if (reporter is not None and runtime.is_main) else Reporter()
    try:
        with writing(config.out), contextlib.ExitStack() as cleanup:
            return _run(config, runtime, log, cleanup)
    finally:
        gc.collect()  # DDP's reducer must go before its process group
        if owned:
            shutdown(runtime)


def _run(config: FinetuneConfig, runtime: Runtime, log: Reporter, cleanup) -> dict[str, Any]:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    lock, _ = claim_run_dir(out, runtime, log, False, kind="finetune")
    if lock is not None:
        cleanup.callback(lock.release)
    _refuse_other_run(out, runtime)
    task = get_task(config.task)
    init_dir = resolve_model(config.init_from, "--init-from", runtime, log)
    model_config = load_config(init_dir)
    check_fits(model_config, training=True, device=runtime.device, source=str(config.init_from))
    if config.push_to:  # no token or HF_HUB_OFFLINE: say so now, not after the training
        from bertcli.hub import check_push_target

        check_push_target(config.push_to, "--push-to")
    tokenizer = finetune_tokenizer(config.tokenizer, init_dir, config.init_from)
    check_vocab(tokenizer, model_config.vocab_size, f"--init-from {config.init_from}")
    check_positions(
        config.max_seq_length,
        model_config.max_position_embeddings,
        "--max-seq-length",
        str(config.init_from),
    )
    data = load_task_data(config, task, tokenizer, log)
    data.pad_id = tokenizer.pad_id
    num_eval = sum(len(e.items) for e in data.evals)
    log.log(
        f"{task.name}: {len(data.train)} training "
        f"{'windows' if data.kind == 'token' else 'examples'}"
        f", {num_eval} eval examples, {len(data.labels) if not data.regression else 1} labels; "
        f"on {runtime.device} ({runtime.precision}"
        + (", oneDNN matmuls" if runtime.cpu_gemm == "onednn" else "")
        + f", {runtime.world_size} process{'es' if runtime.world_size > 1 else ''})"
    )
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_json(out, config, runtime, model_config, init_dir, data)
    runtime.barrier()
    metrics = MetricsWriter(out, tensorboard=config.tensorboard) if runtime.is_main else None
    if metrics is not None:
        cleanup.callback(metrics.close)
    runs = []
    for seed in range(config.seed, config.seed + config.seeds):
        runs.append(_one_seed(config, data, init_dir, tokenizer, runtime, seed, log, metrics, out))
    result = _finish(config, data, runs, runtime, out, num_eval)
    return result


def _one_seed(config, data, init_dir, tokenizer, runtime, seed, log, metrics, out) -> dict:
    torch.manual_seed(seed)  # the classifier's initialisation
    num_labels = 1 if data.regression else len(data.labels)
    model = build_task_model(
        init_dir, data.kind, num_labels, "regression" if data.regression else None
    )
    if seed == config.seed:
        fresh = [n for n in model.fresh_heads if not n.startswith("classifier")]
        if fresh:
            log.log(f"--init-from has no pooler: initialised {len(fresh)} tensors fresh")
    model.to(runtime.device)
    evaluations: list[dict] = []

    def on_epoch(epoch: int, step: int) -> None:
        if runtime.is_main:
            scores, rows = evaluate_all(model, data, config, runtime)
            evaluations.append({"scores": scores, "rows": rows})
            row = {"step": step, "split": "eval", "epoch": epoch, "seed": seed, **scores}
            if metrics is not None:
                metrics.write(row, prefix=_prefix(config, seed, "eval"))
            shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
            log.log(f"seed {seed} epoch {epoch + 1}: {shown}")
        runtime.barrier()

    stats = train_model(model, data, config, runtime, seed, log, metrics, on_epoch)
    record = {"seed": seed, "eval": {}, **{k: stats[k] for k in ("train_time_s", "examples_per_s")}}
    if runtime.is_main:
        last = evaluations[-1]
        record["eval"] = last["scores"]
        with atomic_directory(out / "seeds" / f"seed-{seed}") as tmp:
            (tmp / "model").mkdir()
            save_task_model(model, data.kind, data.labels, tmp / "model", tokenizer)
            _write_rows(tmp / "eval_predictions.jsonl", last["rows"])
    runtime.barrier()
    return record


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _finish(config, data: TaskData, runs: list[dict], runtime: Runtime, out: Path, num_eval):
    metric = data.task.metric
    ranked = sorted(runs, key=lambda r: r["eval"].get(metric, 0.0))
    chosen = ranked[(len(ranked) - 1) // 2] if runtime.is_main else runs[0]
    names = list(runs[0]["eval"])
    result = {
        "task": data.task.name,
        "metric": metric,
        "eval": {name: statistics.median(r["eval"][name] for r in runs) for name in names},
        "runs": runs,
        "num_train": len(data.train) if data.kind != "token" else _sentences(data),
        "num_eval": num_eval,
        "labels": data.labels if not data.regression else [],
        "median_seed": chosen["seed"],
        "out": str(out),
    }
    if runtime.is_main:
        source = out / "seeds" / f"seed-{chosen['seed']}"
        with atomic_directory(out / "model") as tmp:
            for item in (source / "model").iterdir():
                shutil.copy2(item, tmp / item.name)
        predictions = (source / "eval_predictions.jsonl").read_text(encoding="utf-8")
        write_text_atomic(out / "eval_predictions.jsonl", predictions)
        if not config.keep_all_seeds:
            remove_tree(out / "seeds")
        write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
        _publish(config, out, result)
    runtime.barrier()
    return result


def _publish(config: FinetuneConfig, out: Path, result: dict[str, Any]) -> None:
    """Rank 0: the model card into `model/` (from run.json and results.json), then the push
    that --push-to asks for."""
    from bertcli.modelcard import write_model_card

    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    card = write_model_card(
        out / "model",
        run,
        None,
        task_results=result,
        license=config.license,
        language=config.language or None,
        repo_id=config.push_to,
    )
    result["model_card"] = str(card)
    if config.push_to:
        from bertcli.hub import push_checkpoint

        result["pushed"] = push_checkpoint(out, config.push_to).commit_url


def _sentences(data: TaskData) -> int:
    return len({f["sentence"] for f in data.train})


def _write_run_json(out, config, runtime, model_config, init_dir, data) -> None:
    info = {
        **run_environment(runtime),
        "init_from": str(init_dir),
        "train_file": str(data.train_path),
        "eval_files": [str(e.path) for e in data.evals],
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "model_config": model_config.to_dict(),
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2) + "\n")
