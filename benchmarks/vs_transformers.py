"""The race of issue 22: `bertcli pretrain --data-text --no-nsp` against transformers' run_mlm.py
logic (Trainer + datasets + group_texts), as a user choosing between them would run them.

    python benchmarks/vs_transformers.py [--steps 300] [--pairs 3] [--warm] [--vocab-size 8000]
        [--eval-sequences 256] [--work DIR] [--json benchmarks/results/vs-transformers-X.json]

Both sides get the same bertcli-built WordPiece, the `mini` architecture, 32 x 128 packed MLM,
AdamW lr 5e-4 with 10% warmup, on WikiText-2 train for the same number of steps. Pairs
alternate who runs first. Per run: the wall time of the whole command (cold: empty token /
datasets caches; with --warm, a second run on the filled caches), the peak RSS of its process,
and training tokens/s (bertcli: its metrics.jsonl windows; transformers: Trainer's
train_runtime). Then ONE evaluator (transformers' `BertForMaskedLM` forward, the same fixed
masks) scores both final checkpoints on the same held-out sequences of WikiText-2 valid, in
both packings: bertcli's (documents joined, headings dropped, windows of the stream) and
run_mlm's (every line, each wrapped in [CLS] ... [SEP], concatenated and cut into blocks).

The transformers side is written here from run_mlm.py's logic (not copied): `--hf-run` runs it.
It needs `datasets` and `accelerate` (pip install datasets accelerate).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT2 = ROOT.parent / "shared" / "data" / "wikitext-2"
MINI = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def run_measured(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run a command; its wall time and the peak RSS of its process (wait4's own rusage)."""
    start = time.perf_counter()
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.with_suffix(".err").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:5])} failed:\n{tail}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "stdout": log.with_suffix(".out").read_text(),
    }


def bertcli_command(args, tok: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, "-m", "bertcli", "pretrain", "--data-text",
        "--train-data", str(WIKITEXT2 / "train.txt"), "--tokenizer", str(tok),
        "--preset", "mini", "--max-seq-length", str(args.seq), "--batch-size", str(args.batch),
        "--max-steps", str(args.steps), "--lr", "5e-4", "--warmup-ratio", "0.1", "--no-nsp",
        "--log-every", str(args.log_every), "--out", str(out), "--cache-dir", str(cache),
        "--device", "cpu", "--json",
    ]  # fmt: skip


def hf_command(args, tok: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable, __file__, "--hf-run", str(out), "--tokenizer", str(tok),
        "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
        "--hf-cache", str(cache),
    ]  # fmt: skip


def bertcli_tokens_per_s(out: Path, batch: int, seq: int, log_every: int) -> float:
    """Training tokens over the training time of metrics.jsonl's windows (packed: all real)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("tokens_per_s")]
    tokens = [batch * seq * log_every for _ in rows]
    return sum(tokens) / sum(t / r["tokens_per_s"] for t, r in zip(tokens, rows))


def hf_run(args) -> None:
    """run_mlm.py's logic: datasets' text loader, tokenize every line (with [CLS]/[SEP]),
    group_texts into blocks of --seq, DataCollatorForLanguageModeling(0.15), Trainer."""
    os.environ["HF_DATASETS_CACHE"] = str(args.hf_cache)
    import datasets
    import transformers

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(args.tokenizer / "tokenizer.json"),
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    raw = datasets.load_dataset("text", data_files={"train": str(WIKITEXT2 / "train.txt")})
    tokenized = raw.map(
        lambda b: tok(b["text"], return_special_tokens_mask=True),
        batched=True, remove_columns=["text"],
    )  # fmt: skip
    block = args.seq

    def group_texts(examples):
        joined = {k: list(itertools.chain.from_iterable(examples[k])) for k in examples}
        total = (len(joined["input_ids"]) // block) * block
        return {k: [v[i : i + block] for i in range(0, total, block)] for k, v in joined.items()}

    train = tokenized.map(group_texts, batched=True)["train"]
    config = transformers.BertConfig(vocab_size=tok.vocab_size, **MINI)
    model = transformers.BertForMaskedLM(config)
    training = transformers.TrainingArguments(
        output_dir=str(args.hf_run), per_device_train_batch_size=args.batch,
        max_steps=args.steps, learning_rate=5e-4, warmup_steps=round(0.1 * args.steps),
        weight_decay=0.01,
        logging_steps=max(1, args.steps // 10), save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, seed=42,
    )  # fmt: skip
    collator = transformers.DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    trainer = transformers.Trainer(
        model=model, args=training, train_dataset=train, data_collator=collator
    )
    result = trainer.train()
    trainer.save_model(str(args.hf_run / "final"))
    tok.save_pretrained(str(args.hf_run / "final"))
    tokens = args.steps * args.batch * block
    print(json.dumps({"train_runtime": result.metrics["train_runtime"],
                      "tokens_per_s": tokens / result.metrics["train_runtime"],
                      "optim": training.optim}))  # fmt: skip


def held_out(tok_dir: Path, seq: int, count: int):
    """The same held-out sequences with fixed masks, in bertcli's and in run_mlm's packing."""
    import numpy as np
    import torch

    from bertcli.data.datasets import TextDataset, collate
    from bertcli.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    data = TextDataset([WIKITEXT2 / "valid.txt"], tok, max_seq_length=seq, nsp=False, seed=7)
    bertcli_packed = collate([data[i] for i in range(min(count, len(data)))])
    # run_mlm: every line (blank ones and headings too) as [CLS] ... [SEP], joined, cut
    ids = []
    for line in (WIKITEXT2 / "valid.txt").read_text(encoding="utf-8").splitlines():
        ids += tok.tokenizer.encode(line).ids
        if len(ids) >= count * seq:
            break
    blocks = torch.tensor(ids[: (len(ids) // seq) * seq], dtype=torch.long).view(-1, seq)[:count]
    gen = np.random.default_rng(7)
    chosen = torch.from_numpy(gen.random(blocks.shape) < 0.15)
    chosen &= ~torch.isin(blocks, torch.tensor([tok.cls_id, tok.sep_id, tok.pad_id]))
    labels = torch.where(chosen, blocks, -100)
    inputs = torch.where(chosen, tok.mask_id, blocks)  # all [MASK]: the same for both models
    run_mlm_packed = {
        "input_ids": inputs,
        "token_type_ids": torch.zeros_like(inputs),
        "attention_mask": torch.ones_like(inputs),
        "masked_lm_labels": labels,
    }
    return {"bertcli_packing": bertcli_packed, "run_mlm_packing": run_mlm_packed}


def mlm_loss(checkpoint: Path, batch: dict) -> float:
    """The one evaluator: transformers' BertForMaskedLM forward, mean CE over labelled tokens."""
    import torch
    import torch.nn.functional as F
    import transformers

    model = transformers.BertForMaskedLM.from_pretrained(checkpoint).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(batch["input_ids"]), 32):
            sl = slice(start, start + 32)
            logits = model(
                input_ids=batch["input_ids"][sl],
                token_type_ids=batch["token_type_ids"][sl],
                attention_mask=batch["attention_mask"][sl],
            ).logits
            labels = batch["masked_lm_labels"][sl]
            total += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").item()
            count += int((labels != -100).sum())
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--warm", action="store_true", help="also run each side on warm caches")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertcli-vs-transformers"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hf-run", type=Path, help=argparse.SUPPRESS)  # the transformers side
    parser.add_argument("--hf-cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_run:
        return hf_run(args)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    tok = work / f"tok{args.vocab_size}"
    if not (tok / "tokenizer.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "bertcli", "build-tokenizer", "--train-data",
             str(WIKITEXT2 / "train.txt"), "--vocab-size", str(args.vocab_size), "--out",
             str(tok), "--json"], check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    pairs = []
    for i in range(args.pairs):
        row = {"load_before": os.getloadavg()[0]}
        sides = ["bertcli", "transformers"] if i % 2 == 0 else ["transformers", "bertcli"]
        for side in sides:
            out, cache = work / f"{side}-{i}", work / f"{side}-cache-{i}"
            subprocess.run(["rm", "-rf", str(out), str(cache)], check=True)
            build = bertcli_command if side == "bertcli" else hf_command
            runs = [run_measured(build(args, tok, out, cache), env, work / f"{side}-{i}-cold")]
            entry = {"cold_wall_s": runs[0]["wall_s"], "peak_rss_mb": runs[0]["peak_rss_mb"]}
            if args.warm:  # the same command again, on the caches the cold run filled
                subprocess.run(["rm", "-rf", str(out)], check=True)
                runs.append(
                    run_measured(build(args, tok, out, cache), env, work / f"{side}-{i}-warm")
                )
                entry["warm_wall_s"] = runs[1]["wall_s"]
            if side == "bertcli":
                entry["tokens_per_s"] = bertcli_tokens_per_s(out, args.batch, args.seq,
                                                             args.log_every)  # fmt: skip
                entry["checkpoint"] = str(sorted((out / "checkpoints").glob("step_*"))[-1])
            else:
                lines = [line for line in runs[-1]["stdout"].splitlines() if line.strip()]
                entry.update(json.loads(lines[-1]))
                entry["checkpoint"] = str(out / "final")
            row[side] = entry
        row["load_after"] = os.getloadavg()[0]
        sets = held_out(tok, args.seq, args.eval_sequences)
        for side in ("bertcli", "transformers"):
            row[side]["eval_mlm_loss"] = {
                name: mlm_loss(Path(row[side]["checkpoint"]), batch) for name, batch in sets.items()
            }
        b, t = row["bertcli"], row["transformers"]
        row["ratios"] = {
            "tokens_per_s": b["tokens_per_s"] / t["tokens_per_s"],
            "cold_wall": b["cold_wall_s"] / t["cold_wall_s"],
            "peak_rss": b["peak_rss_mb"] / t["peak_rss_mb"],
        }
        if args.warm:
            row["ratios"]["warm_wall"] = b["warm_wall_s"] / t["warm_wall_s"]
        pairs.append(row)
        print(json.dumps(row["ratios"]), flush=True)
        text = report(args, pairs)  # after every pair: a run cut short keeps what it measured
        if args.json:
            args.json.write_text(text)
    print(text)


def report(args, pairs: list[dict]) -> str:
    """The JSON of the pairs so far, with their medians."""
    medians = {k: statistics.median(p["ratios"][k] for p in pairs) for k in pairs[0]["ratios"]}
    result = {
        "config": {k: v for k, v in vars(args).items() if k in (
            "steps", "pairs", "warm", "vocab_size", "batch", "seq", "eval_sequences")},
        "pairs": pairs,
        "medians": medians,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    return json.dumps(result, indent=2, default=str) + "\n"

if __name__ == "__main__":
    main()
