"""The text path at corpus scale: `pretrain --data-text` on WikiText-2 train x1 and xN.

    python benchmarks/text_scale.py [--scale 20] [--torchrun-scale 5] [--json OUT]

Every figure is a ratio of two runs taken side by side in this one invocation:

1. peak RSS of `pretrain --data-text --preset tiny --max-steps 2` (a child process, its own
   `wait4` rusage) at xN over x1 (goal: <= 1.2);
2. wall time of a restart on the cached token store at xN over the first start that tokenized
   (goal: <= 10%); the restart is a fresh `--out` whose `cache/` holds hard links to the store;
3. `torchrun --nproc-per-node 2`: CPU time spent tokenizing (cold-cache run minus warm-cache run
   of the same command, all processes) over the same difference for one process (goal: ~1x,
   i.e. the corpus is tokenized once, not once per rank);
4. epoch start at xN: `order(epoch)` of the NSP dataset and of the packed one (goal: <= 0.5 s),
   plus the cached dataset construction, in this process.

The corpus is WikiText-2 train concatenated N times into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TRAIN = SHARED / "wikitext-2" / "train.txt"
VOCAB = SHARED / "vocab" / "bert-base-uncased.txt"


def run_child(command: list[str], env: dict | None = None) -> dict:
    """Run a command; its wall time, CPU time (with reaped descendants) and peak RSS (MB)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stderr.write(output.decode(errors="replace")[-4000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def corpus(directory: Path, scale: int) -> Path:
    """WikiText-2 train repeated `scale` times."""
    path = directory / f"train_x{scale}.txt"
    if not path.exists():
        data = TRAIN.read_bytes()
        with path.open("wb") as handle:
            for _ in range(scale):
                handle.write(data)
    return path


def pretrain_command(train: Path, out: Path, launcher: list[str] | None = None) -> list[str]:
    """The measured command."""
    prefix = launcher or [sys.executable, "-m", "bertcli"]
    return [
        *prefix,
        "pretrain", "--data-text", "--train-data", str(train), "--vocab-file", str(VOCAB),
        "--preset", "tiny", "--max-steps", "2", "--batch-size", "16", "--log-every", "1",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def with_cache(source_run: Path, out: Path) -> None:
    """A fresh run directory whose cache/ holds hard links to `source_run`'s token stores."""
    shutil.copytree(source_run / "cache", out / "cache", copy_function=os.link)


def startup(work: Path, scale: int) -> dict:
    """First start (tokenizes) and cached restart at one scale."""
    train = corpus(work, scale)
    first = run_child(pretrain_command(train, work / f"first_x{scale}"))
    with_cache(work / f"first_x{scale}", work / f"again_x{scale}")
    again = run_child(pretrain_command(train, work / f"again_x{scale}"))
    return {"corpus_mb": round(train.stat().st_size / 1e6, 1), "first": first, "cached": again}


def torchrun_tokenizing(work: Path, scale: int) -> dict:
    """Tokenizer CPU time under torchrun with 2 processes over the same with 1 process."""
    train = corpus(work, scale)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = {}
    for procs in (1, 2):
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
            "--master-port", str(29400 + procs), "-m", "bertcli",
        ]  # fmt: skip
        cold = run_child(pretrain_command(train, work / f"tr{procs}_cold", launcher), env)
        with_cache(work / f"tr{procs}_cold", work / f"tr{procs}_warm")
        warm = run_child(pretrain_command(train, work / f"tr{procs}_warm", launcher), env)
        result[f"nproc_{procs}"] = {
            "cold": cold,
            "warm": warm,
            "tokenizing_cpu_s": round(cold["cpu_s"] - warm["cpu_s"], 2),
        }
    one, two = (result[f"nproc_{p}"]["tokenizing_cpu_s"] for p in (1, 2))
    result["ratio_2_over_1"] = round(two / one, 2) if one > 0 else None
    return result


def epoch_start(work: Path, scale: int) -> dict:
    """Construction on the cached store and `order(epoch)` at xN, NSP and packed."""
    sys.path.insert(0, str(ROOT / "src"))
    from bertcli.data.datasets import TextDataset
    from bertcli.tokenizer import tokenizer_from_vocab

    tok = tokenizer_from_vocab(VOCAB)
    train = corpus(work, scale)
    cache = work / f"first_x{scale}" / "cache"
    result = {}
    for nsp in (True, False):
        start = time.perf_counter()
        data = TextDataset([train], tok, max_seq_length=128, cache_dir=cache, nsp=nsp)
        built = time.perf_counter() - start
        times = []
        for epoch in (1, 2, 3):
            start = time.perf_counter()
            data.order(epoch)
            times.append(time.perf_counter() - start)
        result["nsp" if nsp else "packed"] = {
            "examples": len(data),
            "cached_construction_s": round(built, 3),
            "epoch_start_s": round(max(times), 4),
        }
    return result


def main() -> None:
    """Run every measurement and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--torchrun-scale", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/text_scale.json")
    parser.add_argument("--work", type=Path, default=None, help="Scratch dir (default: a temp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bertcli-text-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        small, large = startup(work, 1), startup(work, args.scale)
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
            "python": platform.python_version(),
            "x1": small,
            f"x{args.scale}": large,
            "peak_rss_ratio": round(
                large["first"]["peak_rss_mb"] / small["first"]["peak_rss_mb"], 2
            ),
            "cached_restart_over_first_start": round(
                large["cached"]["wall_s"] / large["first"]["wall_s"], 3
            ),
            "epoch_start": epoch_start(work, args.scale),
            f"torchrun_x{args.torchrun_scale}": torchrun_tokenizing(work, args.torchrun_scale),
        }
        print(json.dumps(results, indent=2))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
