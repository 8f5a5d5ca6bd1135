"""`benchmarks/gpu.sh --dry-run`: the lent-GPU script's phases at tiny sizes on the CPU, so it
cannot rot between GPU sessions; and `benchmarks/gpu_table.py` on what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.conftest import ROOT, WIKITEXT2, require

PHASES = ["environment", "benchmark", "preprocess", "pretrain", "tests"]


def test_dry_run_writes_one_json_and_one_log(tmp_path):
    require(WIKITEXT2 / "train.txt")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.log"]
    result = json.loads((out / "gpu.json").read_text())
    assert result["dry_run"] is True
    assert list(result["phases"]) == PHASES
    failed = {n: p.get("tail") for n, p in result["phases"].items() if p["status"] != "ok"}
    assert not failed, failed
    phases = result["phases"]
    assert phases["environment"]["found"]["torch"]
    cases = phases["benchmark"]["cases"]
    assert [(c["preset"], c["seq"]) for c in cases] == [("tiny", 128), ("tiny", 512)]
    for case in cases:
        for path in ("padded", "unpadded"):
            assert case[path]["tokens_per_s"] > 0 and case[path]["mfu"] is None  # CPU: no peak
        assert case["batch"] == case["batch_cap"] and case["out_of_memory_at"] == []
    assert phases["preprocess"]["summary"]
    pretrain = phases["pretrain"]
    assert sorted(map(int, pretrain["losses"])) == [2, 4, 6]
    assert "loss_falling" in pretrain and pretrain["mfu_median"] is None
    counts = phases["tests"]["counts"]
    assert counts.get("skipped", 0) >= 15 and not counts.get("failed")  # no CUDA: all skipped
    summary = result["summary"]
    assert set(summary) >= {"device", "mfu", "loss_falling", "failed_phases"}
    assert summary["failed_phases"] == [] and summary["mfu"] == {"tiny/128": None, "tiny/512": None}
    log = (out / "gpu.log").read_text()
    assert all(f"== {phase}" in log for phase in PHASES)

    table = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_table.py"), str(out / "gpu.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("| model ") and "tiny" in table.stdout


def test_benchmark_halves_the_batch_until_it_fits(monkeypatch):
    """The cuda section's search: out of memory at 8 and 4, so it measures at 2 (no GPU can be
    filled here, so the step raises what CUDA's allocator raises)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real_step = bench.ours_step

    def step(model, opt, b, autocast):
        if len(b["input_ids"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real_step(model, opt, b, autocast)

    monkeypatch.setattr(bench, "ours_step", step)
    (row,) = bench.bench_cuda(torch.device("cpu"), 1, [("tiny", 64, 8)], "fp32", 2000)
    assert row["batch"] == 2 and row["batch_cap"] == 8 and row["out_of_memory_at"] == [8, 4]
    assert row["unpadded"]["tokens_per_s"] > 0 and row["padded"]["tokens_per_s"] > 0
