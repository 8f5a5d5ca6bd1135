"""Does extending the vocabulary pay on unseen-domain text? Fertility, step-0 and after-K MLM loss.

    python benchmarks/vocab_extension.py [--work DIR] [--base-run DIR] [--base-steps 150]
        [--steps 30] [--add-tokens 1000] [--batch-size 16] [--max-seq-length 64]
        [--json benchmarks/results/vocab-extension-cpu-2core.json]

The base is a `mini` BERT pretrained here on WikiText-2 (`--base-steps`, or reuse a run dir with
`--base-run`) over bert-base-uncased's vocab.txt, which has 994 `[unused*]` slots to fill. The
domain is WNUT-17 (tweets: slang, handles, hashtags, URLs, emoji), text the base never saw and
in the same language, so a new piece's base tokenization carries meaning the base did learn
(the Chinese sample would give FVT rows averaged from never-trained CJK rows; the Wikipedia
excerpt is the base's own domain). Train + dev are the domain corpus, test is held out.

It reports: fertility (tokens per whitespace word of the held-out text) under the base and the
extended vocabulary; masked-LM loss at step 0 on the held-out text for the base, the extended
model with FVT rows and with random rows (normal(0, 0.02), zero bias), on the
lines where the extended tokenizer emits a new piece, and on the lines where it emits none
(there the two tokenizations are identical, so the masks are too and the losses compare
directly); and the same after K steps of continued pretraining on the domain corpus, three
ways with the same K, data, seed and schedule: FVT (`pretrain --init-from BASE --tokenizer
EXT`, the command under test), random rows, and not extended. Losses on text with new pieces
are per predicted token of different tokenizations: fewer, longer tokens under the extension,
so they do not compare one to one with the base's (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bertcli(*args: str, log: Path) -> None:
    """Run one bertcli command, its output into `log`; fail loudly."""
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "bertcli", *args], stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        sys.exit(f"bertcli {' '.join(args[:1])} failed; see {log}:\n{log.read_text()[-2000:]}")


def conll_lines(path: Path) -> list[str]:
    """WNUT-17 CoNLL (token TAB tag) -> one sentence per line (whitespace-only lines break)."""
    lines, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                lines.append(" ".join(words))
            words = []
        else:
            words.append(line.split("\t")[0])
    if words:
        lines.append(" ".join(words))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bertcli-vocab-extension"))
    parser.add_argument("--base-run", type=Path, default=None, help="reuse this base run dir")
    parser.add_argument("--base-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=30, help="K continued-pretraining steps")
    parser.add_argument("--add-tokens", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-lines", type=int, default=400, help="held-out tweets scored")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from bertcli.evaluate import evaluate_checkpoint
    from bertcli.hf import load_pretrained, save_pretrained
    from bertcli.tokenizer import load_tokenizer, write_tokenizer_files
    from bertcli.train.checkpoint import resolve_checkpoint
    from bertcli.train.runtime import init_runtime
    from bertcli.vocab_resize import grow_embeddings, plan_growth

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), loadavg()
    seconds: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        seconds[name] = round(time.time() - since, 1)
        print(f"{name}: {seconds[name]} s (load {loadavg()})", flush=True)
        return time.time()

    t = time.time()
    base_tok = work / "base-tokenizer"
    if not (base_tok / "vocab.txt").is_file():
        bertcli(
            "build-tokenizer",
            "--vocab-file",
            str(DATA / "vocab" / "bert-base-uncased.txt"),
            "--out",
            str(base_tok),
            log=work / "base-tokenizer.log",
        )
    shape = ["--max-seq-length", str(args.max_seq_length), "--batch-size", str(args.batch_size)]
    common = [*shape, "--no-nsp", "--device", "cpu", "--seed", str(args.seed), "--log-every", "50"]
    base_run = args.base_run or work / "base"
    if args.base_run is None and not (base_run / "checkpoints").is_dir():
        bertcli(
            "pretrain", "--data-text", "--train-data", str(DATA / "wikitext-2" / "train.txt"),
            "--tokenizer", str(base_tok), "--preset", "mini", "--out", str(base_run),
            "--max-steps", str(args.base_steps), "--lr", str(args.lr), "--warmup-ratio", "0.05",
            *common, log=work / "base.log",
        )  # fmt: skip
    base = resolve_checkpoint(base_run)
    t = phase("base_pretraining", t)

    train_text, test_text = work / "wnut17-train-dev.txt", work / "wnut17-test.txt"
    wnut = DATA / "downstream" / "wnut17"
    train_lines = conll_lines(wnut / "train.conll") + conll_lines(wnut / "dev.conll")
    test_lines = conll_lines(wnut / "test.conll")[: args.eval_lines]
    train_text.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    test_text.write_text("\n".join(test_lines) + "\n", encoding="utf-8")

    ext_dir = work / "extended-tokenizer"
    if ext_dir.exists():
        import shutil

        shutil.rmtree(ext_dir)
    bertcli(
        "build-tokenizer", "--extend", str(base), "--train-data", str(train_text),
        "--add-tokens", str(args.add_tokens), "--out", str(ext_dir), "--json",
        log=work / "extend.log",
    )  # fmt: skip
    t = phase("extend", t)
    record = json.loads((ext_dir / "extension.json").read_text(encoding="utf-8"))
    base_tk, ext_tk = load_tokenizer(base), load_tokenizer(ext_dir)
    new_ids = {p["id"] for p in record["pieces"]}

    words = sum(len(line.split()) for line in test_lines)
    base_ids = base_tk.encode_batch(test_lines)
    ext_ids = ext_tk.encode_batch(test_lines)
    fertility = {
        "words": words,
        "base_tokens": sum(map(len, base_ids)),
        "extended_tokens": sum(map(len, ext_ids)),
        "base": round(sum(map(len, base_ids)) / words, 4),
        "extended": round(sum(map(len, ext_ids)) / words, 4),
        "base_unk": sum(ids.count(base_tk.unk_id) for ids in base_ids),
        "extended_unk": sum(ids.count(ext_tk.unk_id) for ids in ext_ids),
        "new_piece_tokens": sum(1 for ids in ext_ids for i in ids if i in new_ids),
    }
    with_new = [ln for ln, ids in zip(test_lines, ext_ids) if new_ids & set(ids)]
    without_new = [ln for ln, ids in zip(test_lines, ext_ids) if not new_ids & set(ids)]
    same = all(
        a == b for a, b, ids in zip(base_ids, ext_ids, ext_ids) if not new_ids & set(ids)
    )  # the premise of comparing losses on these lines
    texts = {"with_new": work / "test-with-new.txt", "without_new": work / "test-without-new.txt"}
    texts["with_new"].write_text("\n".join(with_new) + "\n", encoding="utf-8")
    texts["without_new"].write_text("\n".join(without_new) + "\n", encoding="utf-8")

    runtime = init_runtime("cpu", "fp32")

    def scores(checkpoint: Path) -> dict[str, float]:
        out = {}
        for name, path in texts.items():
            result = evaluate_checkpoint(
                checkpoint, runtime, data_text=[path], batch_size=32,
                max_seq_length=args.max_seq_length, seed=args.seed,
            )  # fmt: skip
            out[name] = round(result["mlm_loss"], 4)
            out[f"{name}_accuracy"] = round(result["mlm_accuracy"], 4)
            out[f"{name}_masked"] = result["num_masked_tokens"]
        # all held-out lines: the two parts weighted by their masked tokens (one pass fewer)
        masked = out["with_new_masked"] + out["without_new_masked"]
        out["all"] = round(
            (
                out["with_new"] * out["with_new_masked"]
                + out["without_new"] * out["without_new_masked"]
            )
            / masked,
            4,
        )
        return out

    growth = plan_growth(ext_tk, base, load_pretrained(base).config.vocab_size)
    step0 = {"base": scores(base)}
    for init in ("fvt", "random"):
        torch.manual_seed(args.seed)
        grown = grow_embeddings(load_pretrained(base), growth, init=init)
        directory = work / f"step0-{init}"
        save_pretrained(grown, directory)
        write_tokenizer_files(ext_tk, directory)
        step0[init] = scores(directory)
    t = phase("step0_eval", t)

    runs = {
        "fvt": ["--init-from", str(base), "--tokenizer", str(ext_dir)],
        "random": ["--init-from", str(work / "step0-random"), "--tokenizer", str(ext_dir)],
        "not_extended": ["--init-from", str(base), "--tokenizer", str(base)],
    }
    after = {}
    for name, init in runs.items():
        out = work / f"continued-{name}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        bertcli(
            "pretrain", "--data-text", "--train-data", str(train_text), *init,
            "--out", str(out), "--max-steps", str(args.steps), "--lr", str(args.lr),
            "--warmup-ratio", "0.1", *common, log=work / f"continued-{name}.log",
        )  # fmt: skip
        after[name] = scores(resolve_checkpoint(out))
        t = phase(f"continued_{name}", t)
    fvt_log = (work / "continued-fvt.log").read_text()
    results = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "wall_s": round(time.time() - started, 1),
        "seconds": seconds,
        "args": {k: str(v) for k, v in vars(args).items()},
        "domain": "WNUT-17 train+dev (corpus), test (held out)",
        "extension": {
            "added": len(record["pieces"]),
            "slots_filled": record["slots_filled"],
            "appended": record["appended"],
            "vocab_size": record["vocab_size"],
            "corpus": record["corpus"],
            "top_pieces": [
                {k: p[k] for k in ("piece", "id", "count", "base_tokens")}
                for p in record["pieces"][:15]
            ],
        },
        "fvt_info_line": next((ln for ln in fvt_log.splitlines() if "(FVT)" in ln), None),
        "fertility": fertility,
        "test_lines": {"all": len(test_lines), "with_new": len(with_new)},
        "without_new_identical_tokenization": same,
        "step0_mlm_loss": step0,
        "after_k_steps_mlm_loss": after,
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
