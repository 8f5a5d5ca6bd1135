"""Model cards: `run.json` + the metrics → the `README.md` the Hugging Face Hub renders.

Nothing in a card is typed by hand: every number and name comes from the run record (`run.json`,
written by `pretrain`/`finetune`), the metrics rows (`metrics.jsonl`) and, for a fine-tuned
model, `results.json`. The YAML front matter is made by `huggingface_hub.ModelCardData` and
`EvalResult`, so the `model-index` is in the schema the Hub parses into its evaluation widget.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from bertcli.atomic import write_text_atomic

CARD_FILE = "README.md"
TASK_PIPELINES = {"ner": "token-classification"}  # every other finetune task classifies text
PIPELINE_HEADS = {
    "fill-mask": "BertForMaskedLM",
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
}
_MLM_METRICS = (  # (key in an eval row, metric type, shown name)
    ("mlm_accuracy", "accuracy", "MLM accuracy"),
    ("perplexity", "perplexity", "MLM perplexity"),
    ("mlm_loss", "loss", "MLM loss"),
    ("nsp_accuracy", "accuracy", "NSP accuracy"),
)


def run_metrics(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """The last train row and the last eval row of `metrics.jsonl` (at or before `step`), in
    the shape `Trainer.fit()` returns: `{"train": row | None, "eval": row | None}`."""
    found: dict[str, Any] = {"train": None, "eval": None}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            row_step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill: the card shows what the file holds
        if step is not None and row_step > step:
            continue
        found["eval" if row.get("split") == "eval" else "train"] = row
    return found


def pipeline_for(task_results: dict[str, Any] | None) -> str:
    """`fill-mask` for a pretrained model, else the pipeline of the fine-tuned task."""
    if task_results is None:
        return "fill-mask"
    return TASK_PIPELINES.get(str(task_results.get("task")), "text-classification")


def render_model_card(
    run: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    *,
    task_results: dict[str, Any] | None = None,
    pipeline_tag: str | None = None,
    license: str | None = None,
    language: list[str] | None = None,
    repo_id: str | None = None,
) -> str:
    """The card as Markdown with YAML front matter.

    `run` is a `run.json` dict; `metrics` is `{"train": row, "eval": row}` (`run_metrics`);
    `task_results` is a finetune `results.json` dict (issue 20's format). `license` and
    `language` default to the run's own options; `repo_id` names the model in the usage code.
    """
    from huggingface_hub import ModelCardData

    metrics = metrics or {}
    config = run.get("config") or {}
    pipeline_tag = pipeline_tag or pipeline_for(task_results)
    license = license if license is not None else config.get("license")
    language = language if language is not None else (config.get("language") or None)
    base = _base_model(run)
    name = repo_id or config.get("push_to") or _default_name(run, task_results)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=_tags(pipeline_tag, task_results),
        license=license,
        language=list(language) if language else None,
        base_model=base,
        model_name=name,
        eval_results=_eval_results(run, metrics, task_results, pipeline_tag) or None,
    )
    body = [
        f"# {name}",
        "",
        _summary(run, task_results, base),
        "",
        *_training_section(run, metrics, task_results),
        *_evaluation_section(metrics, task_results),
        *_usage_section(pipeline_tag, repo_id),
        *_limitations_section(run, task_results),
    ]
    return "---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body).rstrip() + "\n"


def write_model_card(directory: str | Path, run: dict[str, Any], metrics=None, **options) -> Path:
    """Render the card (see `render_model_card` for `options`) into `directory/README.md`,
    atomically: a reader never sees half a card."""
    path = Path(directory) / CARD_FILE
    write_text_atomic(path, render_model_card(run, metrics, **options))
    return path


def is_bertcli_card(path: str | Path) -> bool:
    """Whether a README.md is a card bertcli wrote (so it may be rewritten), not the user's."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(Path(path))
    except (OSError, ValueError):
        return False
    return "bertcli" in (card.data.tags or [])


# ---- front matter --------------------------------------------------------------------------


def _tags(pipeline_tag: str, task_results: dict[str, Any] | None) -> list[str]:
    tags = ["bert", "bertcli", pipeline_tag]
    if task_results is None:
        tags.append("masked-lm")
    elif task_results.get("task"):
        tags.append(str(task_results["task"]))
    return tags


def _base_model(run: dict[str, Any]) -> str | None:
    """The published name the run was initialised from: run.json's `base_model`, which the run
    sets only when its --init-from was fetched from the Hub (a local path is not a Hub id)."""
    if "base_model" in run:
        return str(run["base_model"]) if run["base_model"] else None
    # a run.json without the field (finetune's): a name is published when the directory it
    # resolved to is that name's snapshot in the Hugging Face cache
    init = str((run.get("config") or {}).get("init_from") or "")
    resolved = str(run.get("init_from") or "")
    if init and f"models--{init.replace('/', '--')}{os.sep}snapshots" in resolved:
        return init
    return None


def _train_files(run: dict[str, Any]) -> list[str]:
    """pretrain's `train_files`, or finetune's one `train_file`."""
    return list(run.get("train_files") or ([run["train_file"]] if run.get("train_file") else []))


def _default_name(run: dict[str, Any], task_results: dict[str, Any] | None) -> str:
    out = (run.get("config") or {}).get("out")
    if out:
        return Path(str(out)).name
    return f"bert-{task_results['task']}" if task_results and task_results.get("task") else "bert"


def _eval_dataset(run: dict[str, Any]) -> str:
    files = run.get("eval_files") or []
    sources = run.get("eval_sources") or []
    names = [Path(str(f)).name for f in files] or [Path(str(s["path"])).name for s in sources]
    return ", ".join(names) or "held-out text"


def _eval_results(run, metrics, task_results, pipeline_tag) -> list:
    from huggingface_hub import EvalResult

    results = []
    if task_results is not None:
        task = str(task_results.get("task") or "task")
        dataset = str(task_results.get("dataset") or task)
        for split, key, value in _task_scores(task_results):
            results.append(
                EvalResult(
                    task_type=pipeline_tag,
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split=split,
                    metric_type=_metric_type(key),
                    metric_name=key if split == "eval" else f"{key} ({split})",
                    metric_value=float(value),
                )
            )
        return results
    row = metrics.get("eval") or {}
    dataset = _eval_dataset(run)
    for key, metric_type, label in _MLM_METRICS:
        value = row.get(key)
        if key.startswith("nsp") and not (run.get("config") or {}).get("train", {}).get("nsp"):
            continue  # a --no-nsp run has no NSP head worth scoring
        if isinstance(value, int | float):
            results.append(
                EvalResult(
                    task_type=pipeline_tag,
                    dataset_type="text",
                    dataset_name=dataset,
                    dataset_split="eval",
                    metric_type=metric_type,
                    metric_name=label,
                    metric_value=float(value),
                )
            )
    return results


def _task_scores(task_results: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(split, metric, value) of results.json's `eval`; a nested mapping (MNLI's matched and
    mismatched sets) is one split per key."""
    scores = []
    for key, value in (task_results.get("eval") or {}).items():
        if isinstance(value, dict):
            scores += [
                (key, sub, v) for sub, v in value.items() if isinstance(v, int | float)
            ]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scores.append(("eval", key, value))
    return scores


def _metric_type(key: str) -> str:
    """The Hub's metric ids (those of `evaluate`) for finetune's metric names."""
    return {"matthews_correlation": "matthews_correlation", "spearmanr": "spearmanr"}.get(
        key, key.split("_")[0] if key.endswith(("_matched", "_mismatched")) else key
    )


# ---- body ----------------------------------------------------------------------------------


def _summary(run, task_results, base) -> str:
    model = run.get("model_config") or {}
    params = run.get("parameters")
    shape = ", ".join(
        part
        for part in (
            f"{params / 1e6:.1f}M parameters" if isinstance(params, int | float) else "",
            f"{model['num_hidden_layers']} layers" if "num_hidden_layers" in model else "",
            f"hidden size {model['hidden_size']}" if "hidden_size" in model else "",
            f"{model['num_attention_heads']} heads" if "num_attention_heads" in model else "",
            f"vocabulary {model['vocab_size']}" if "vocab_size" in model else "",
        )
        if part
    )
    version = run.get("bertcli_version", "?")
    start = f", continued from [{base}](https://huggingface.co/{base})" if base else ""
    if task_results is not None:
        what = f"fine-tuned on `{task_results.get('task')}`"
    else:
        nsp = (run.get("config") or {}).get("train", {}).get("nsp", True)
        what = "pretrained with masked-LM" + (" and next-sentence" if nsp else "") + " loss"
    return f"A BERT encoder ({shape}) {what}{start}, by bertcli {version}."


def _training_section(run, metrics, task_results) -> list[str]:
    config = run.get("config") or {}
    train = config.get("train") or config  # pretrain nests its TrainConfig; finetune does not
    lines = ["## Training", ""]
    if run.get("command"):
        lines += ["Command line:", "", "```sh", shlex.join(run["command"]), "```", ""]
    lines += _corpus_lines(run)
    lines += _tokenizer_lines(run)
    facts = _training_facts(run, config, train, metrics, task_results)
    if facts:
        lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts), ""]
    return lines


def _corpus_lines(run) -> list[str]:
    corpus = run.get("corpus") or {}
    files = corpus.get("train_files") or [
        {"path": p, "bytes": None} for p in _train_files(run)
    ]
    if not files and not run.get("train_sources"):
        return []
    lines = ["Training data:", ""]
    if files:
        lines += ["| file | size |", "|---|---|"]
        lines += [f"| `{Path(str(f['path'])).name}` | {_size(f.get('bytes'))} |" for f in files]
        lines.append("")
    for source in run.get("train_sources") or []:
        lines.append(
            f"- shards `{Path(str(source['path'])).name}`: {source.get('examples')} examples"
            + (f", weight {source['weight']}" if source.get("weight") is not None else "")
        )
    if run.get("train_sources"):
        lines.append("")
    if corpus.get("train_tokens") is not None:
        lines += [
            f"{corpus['train_tokens']:,} tokens in {corpus.get('train_documents', '?'):,} "
            "documents (under the tokenizer below)"
            + (
                f"; held out: {corpus['eval_tokens']:,} tokens"
                if corpus.get("eval_tokens") is not None
                else ""
            )
            + ".",
            "",
        ]
    return lines


def _tokenizer_lines(run) -> list[str]:
    tokenizer = run.get("tokenizer")
    vocab = (run.get("model_config") or {}).get("vocab_size")
    if tokenizer is None and vocab is None:
        return []
    where = f"`{Path(str(tokenizer)).name}`" if tokenizer else "the checkpoint's"
    lines = [f"Tokenizer: {where} WordPiece" + (f", {vocab} entries" if vocab else "") + "."]
    extension = run.get("tokenizer_extension")
    if extension:
        base = extension.get("base") or {}
        base_name = base.get("source") or "the base vocabulary"
        lines.append(
            f"It extends {base_name} (size {base.get('vocab_size', '?')}) with "
            f"{extension.get('added', '?')} domain pieces"
            + (
                f" ({extension['slots']} in its `[unused*]` slots)"
                if extension.get("slots") is not None
                else ""
            )
            + "; the tokenizer's `extension.json` lists them."
        )
    return [*lines, ""]


def _training_facts(run, config, train, metrics, task_results) -> list[tuple[str, str]]:
    result = run.get("result") or {}
    world = run.get("world_size")
    facts: list[tuple[str, str]] = []
    if task_results is not None:
        facts += [
            ("task", f"`{task_results.get('task')}`"),
            ("train / eval examples", f"{task_results.get('num_train')} / "
             f"{task_results.get('num_eval')}"),
            ("seeds", ", ".join(str(r.get("seed")) for r in task_results.get("runs") or [])),
        ]  # fmt: skip
    if task_results is not None and train.get("num_epochs"):
        facts.append(("epochs", str(train["num_epochs"])))
    if result.get("steps") is not None:
        facts.append(("optimizer steps", f"{result['steps']:,}"))
    global_batch = result.get("global_batch")
    if global_batch is None and train.get("batch_size") and world:
        global_batch = train["batch_size"] * train.get("batches_per_step", 1) * world
    if global_batch is not None:
        facts.append(
            (
                "global batch",
                f"{global_batch} sequences ({train.get('batch_size')} per device x "
                f"{train.get('batches_per_step', 1)} accumulated x {world} process"
                + ("es)" if world != 1 else ")"),
            )
        )
    if config.get("max_seq_length"):
        facts.append(("sequence length", f"{config['max_seq_length']} tokens"))
    if result.get("sequences_seen") is not None:
        facts.append(("sequences seen", f"{result['sequences_seen']:,}"))
    if result.get("token_positions_seen") is not None:
        facts.append(
            ("tokens seen", f"{result['token_positions_seen']:,} positions (padding included)")
        )
    if train.get("optimizer"):
        facts.append(
            (
                "optimizer",
                f"{train['optimizer']} (betas {train.get('beta1')}, {train.get('beta2')}; "
                f"eps {train.get('eps')}; weight decay {train.get('weight_decay')}; "
                f"grad-norm clip {train.get('max_grad_norm')})",
            )
        )
    if train.get("lr_policy"):
        warmup = result.get("warmup_steps")
        facts.append(
            (
                "schedule",
                f"{train['lr_policy']}, peak LR {train.get('lr')}, "
                + (
                    f"{warmup} warmup steps"
                    if warmup is not None
                    else f"warmup {train.get('warmup_steps') or train.get('warmup_ratio')}"
                )
                + (f", min LR {train['min_lr']}" if train.get("min_lr") else ""),
            )
        )
    if train.get("whole_word_masking") or config.get("whole_word_masking"):
        facts.append(("masking", "whole words"))
    if run.get("precision"):
        facts.append(("precision", str(run["precision"])))
    devices = run.get("device_names") or ([run["device"]] if run.get("device") else [])
    if world is not None:
        facts.append(("world size", f"{world} ({_devices(devices)})"))
    if result.get("wall_time_s") is not None:
        facts.append(("wall time", _duration(result["wall_time_s"])))
    last = (metrics or {}).get("train") or {}
    losses = [
        f"{key} {last[key]:.4f}"
        for key in ("loss", "mlm_loss", "nsp_loss")
        if isinstance(last.get(key), int | float)
    ]
    if losses:
        facts.append((f"final training loss (step {last.get('step')})", ", ".join(losses)))
    versions = [
        f"{name} {run[key]}"
        for name, key in (("torch", "torch_version"), ("tokenizers", "tokenizers_version"))
        if run.get(key)
    ]
    if versions:
        facts.append(("software", f"bertcli {run.get('bertcli_version')}, " + ", ".join(versions)))
    return facts


def _evaluation_section(metrics, task_results) -> list[str]:
    if task_results is not None:
        scores = _task_scores(task_results)
        if not scores:
            return []
        seeds = len(task_results.get("runs") or [])
        lines = [
            "## Evaluation",
            "",
            f"On the `{task_results.get('task')}` eval set ({task_results.get('num_eval')} "
            "examples)" + (f", median of {seeds} seeds" if seeds > 1 else "") + ":",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [
            f"| {k if split == 'eval' else f'{k} ({split})'} | {_number(v)} |"
            for split, k, v in scores
        ]
        return [*lines, ""]
    row = (metrics or {}).get("eval") or {}
    if not row:
        return [
            "## Evaluation",
            "",
            "No held-out evaluation was run (no `--eval-data`).",
            "",
        ]
    lines = [
        "## Evaluation",
        "",
        f"Held-out masked-LM scores at step {row.get('step')} "
        f"({row.get('num_masked_tokens')} masked tokens, {row.get('num_sequences')} sequences):",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, _, label in _MLM_METRICS:
        if isinstance(row.get(key), int | float):
            lines.append(f"| {label} | {_number(row[key])} |")
    return [*lines, ""]


def _usage_section(pipeline_tag: str, repo_id: str | None) -> list[str]:
    model_id = repo_id or "path/to/this/directory"
    head = PIPELINE_HEADS.get(pipeline_tag, "AutoModel")
    example = {
        "fill-mask": "print(fill(f\"Paris is the {fill.tokenizer.mask_token} of France.\"))",
        "text-classification": 'print(fill("A sentence to classify."))',
        "token-classification": 'print(fill("Words to tag in Manchester."))',
    }.get(pipeline_tag, "")
    return [
        "## How to use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {head}, pipeline",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")',
        f'model = {head}.from_pretrained("{model_id}")',
        f'fill = pipeline("{pipeline_tag}", model=model, tokenizer=tokenizer)',
        example,
        "```",
        "",
    ]


def _limitations_section(run, task_results) -> list[str]:
    files = [Path(str(p)).name for p in _train_files(run)]
    data = ", ".join(f"`{f}`" for f in files) or "its training data"
    lines = [
        "## Limitations",
        "",
        f"- It knows only what {data} holds: text, topics and registers absent from it are "
        "handled poorly, and it reproduces that text's biases.",
        f"- Inputs longer than {(run.get('model_config') or {}).get('max_position_embeddings')} "
        "tokens do not fit its position table; it was trained on sequences of "
        f"{(run.get('config') or {}).get('max_seq_length', '?')} tokens.",
    ]
    if task_results is None:
        lines.append(
            "- A masked-LM encoder: fine-tune it before using it for classification or tagging; "
            "it does not generate text."
        )
    else:
        lines.append(
            f"- Scored on {task_results.get('num_eval')} examples of one eval set; expect lower "
            "scores on text that differs from it."
        )
    return [*lines, ""]


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _devices(names: list[str]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x {name}" if n > 1 else name for name, n in counts.items()) or "?"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
