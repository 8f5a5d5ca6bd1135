"""The README's GPU table, in markdown, from the JSON `benchmarks/gpu.sh` writes.

    python benchmarks/gpu_table.py OUT/gpu.json > table.md

One row per benchmark case (tokens/s and MFU of the unpadded path, the eager trainer's, and of
the padded one), against the issue's targets; then the 300-step pretrain, the tests and the
memory figures, each a line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# MFU targets in bf16 (issue 22; DeepLearningExamples' BERT reaches 44.7% on an A100)
TARGETS = {("base", 128): 0.45, ("large", 128): 0.54}


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def _corpus(phases: dict) -> str:
    corpus = phases.get("preprocess", {}).get("corpus", "")
    if "sample" in corpus:
        return "shards of the bundled sample, 5% of WikiText-2, with its own 8k WordPiece"
    return "WikiText-2 train shards"


def table(result: dict) -> str:
    """Markdown for one gpu.json."""
    phases = result.get("phases", {})
    found = phases.get("environment", {}).get("found", {})
    bench = phases.get("benchmark", {})
    lines = [
        "| model | seq | batch (largest that fits) | padding | tokens/s unpadded | MFU unpadded "
        "| tokens/s padded | MFU padded | MFU target | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in bench.get("cases", []):
        target = TARGETS.get((c["preset"], c["seq"]))
        verdict = ""
        if target is not None and c["unpadded"]["mfu"] is not None:
            verdict = " ✓" if max(c["unpadded"]["mfu"], c["padded"]["mfu"]) >= target else " ✗"
        lines.append(
            f"| {c['preset']} | {c['seq']} | {c['batch']} | {_pct(c['padding'])} "
            f"| {_num(c['unpadded']['tokens_per_s'])} | {_pct(c['unpadded']['mfu'])} "
            f"| {_num(c['padded']['tokens_per_s'])} | {_pct(c['padded']['mfu'])} "
            f"| {'≥ ' + _pct(target) + verdict if target else '—'} "
            f"| {_num(c.get('peak_memory_gib'), '.1f')}{' GiB' if c.get('peak_memory_gib') else ''} |"
        )
    if not bench.get("cases"):
        lines.append(f"| benchmark: {bench.get('status', 'not run')} | | | | | | | | | |")
    device = found.get("device", "?")
    notes = [
        "",
        f"Device: {device}; torch {found.get('torch', '?')} (CUDA {found.get('cuda', '?')}); "
        f"{c['precision'] if bench.get('cases') else 'bf16'}; flash-attn "
        f"{'installed' if found.get('flash_attn') else 'not installed (SDPA)'}; "
        f"measured {result.get('started', '?')}"
        + (" (dry run on CPU)" if result.get("dry_run") else "")
        + ".",
    ]
    pretrain = phases.get("pretrain", {})
    summary = result.get("summary", {})
    if pretrain.get("status") == "ok":
        ratio = summary.get("pretrain_mfu_over_benchmark")
        notes.append(
            f"Pretrain ({len(pretrain.get('losses', {}))} logged rows to step "
            f"{max(map(int, pretrain.get('losses', {0: 0})))} on {_corpus(phases)}): loss {_num(pretrain.get('loss_first'), '.2f')}"
            f" → {_num(pretrain.get('loss_last'), '.2f')}; logged MFU {_pct(pretrain.get('mfu_median'))}"
            + (f", {ratio:.2f}× the benchmark's" if ratio else "")
            + "."
        )
    else:
        notes.append(f"Pretrain: {pretrain.get('status', 'not run')}.")
    tests = phases.get("tests", {})
    counts = tests.get("counts", {})
    notes.append(
        "Tests (`pytest -m gpu tests/gpu`): "
        + (", ".join(f"{n} {kind}" for kind, n in counts.items()) or tests.get("status", "not run"))
        + (f"; failed: {', '.join(tests['failures'])}" if tests.get("failures") else "")
        + "."
    )
    figures = tests.get("figures", {})
    memory = {k: v for k, v in figures.items() if k.startswith("memory_")}
    if memory:
        notes.append(
            "Peak memory of a bf16 step: "
            + "; ".join(
                f"{k.removeprefix('memory_')} {v['peak_gib']:.2f} GiB" for k, v in memory.items()
            )
            + "."
        )
    failed = summary.get("failed_phases")
    if failed:
        notes.append(f"Phases that did not complete: {', '.join(failed)} (see gpu.log).")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="gpu.json from benchmarks/gpu.sh")
    args = parser.parse_args()
    print(table(json.loads(args.json.read_text())), end="")


if __name__ == "__main__":
    main()
