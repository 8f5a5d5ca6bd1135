"""The phases of `benchmarks/gpu.sh`: each a subprocess under its own time budget, recorded in
one JSON file (rewritten after every phase, so a cut-short run still leaves its figures) and
one log.

    python benchmarks/gpu_check.py --out DIR [--dry-run] [--deadline SECONDS]

Phases, in order: environment; benchmark (`benchmarks/run.py --only cuda`); preprocess
(WikiText-2 train, seq 128); pretrain (300 steps of base in bf16 on those shards); tests
(`pytest -m gpu tests/gpu`, which gets the time left). A phase that fails or runs out of time
is recorded as such and the next one runs. `--dry-run` runs the same entry points at tiny sizes
on the CPU (CI does, so the script cannot rot between GPU sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, LOG_NAME = "gpu.json", "gpu.log"
DATA_DIRS = (ROOT / "shared" / "data", ROOT.parent / "shared" / "data")
SAMPLE = ROOT / "src" / "bertcli" / "sample" / "train.txt"  # 5% of WikiText-2, in the repo

# seconds per phase on a GPU (the deadline trims the last ones); the tests get what is left
BUDGET = {"environment": 20, "benchmark": 100, "tokenizer": 30, "preprocess": 60, "pretrain": 110}
RESERVE = 5  # for writing the JSON at the end


def find_data() -> Path | None:
    """The shared data directory: $BERTCLI_DATA if set (only it), else shared/data in or beside
    the checkout; None if it lacks WikiText-2 or the vocabularies."""
    given = os.environ.get("BERTCLI_DATA")
    for path in [Path(given)] if given else DATA_DIRS:
        if (path / "wikitext-2" / "train.txt").is_file() and (path / "vocab").is_dir():
            return path
    return None


class Check:
    """The run: phases, their records, the JSON and the log."""

    def __init__(self, out: Path, dry_run: bool, deadline_s: float):
        self.out, self.dry_run = out, dry_run
        self.end = time.monotonic() + deadline_s
        self.work = Path(tempfile.mkdtemp(prefix="bertcli-gpu-"))
        self.log = (out / LOG_NAME).open("a", encoding="utf-8")
        self.result: dict = {
            "dry_run": dry_run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "deadline_s": deadline_s,
            "phases": {},
        }

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        self.log.write(f"[{stamp}] {line}\n")
        self.log.flush()
        print(line, flush=True)

    def save(self) -> None:
        path = self.out / JSON_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        os.replace(tmp, path)

    def left(self) -> float:
        return self.end - time.monotonic() - RESERVE

    def run(self, phase: str, command: list[str], budget: float | None = None, env=None) -> dict:
        """Run one phase's command under min(budget, time left); its output goes to the log."""
        limit = self.left() if budget is None else min(budget, self.left())
        record: dict = {"command": " ".join(map(str, command))}
        if limit < 5:
            record.update(status="skipped", reason="no time left before the deadline")
            return self._close(phase, record)
        shown = (
            record["command"] if len(record["command"]) < 300 else record["command"][:300] + " …"
        )
        self.say(f"== {phase} (at most {limit:.0f} s): {shown}")
        start = time.monotonic()
        # its own session, so a timeout stops the whole tree (torchrun's workers too)
        proc = subprocess.Popen(
            [str(c) for c in command],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=limit)
            rc = proc.returncode
            record["status"] = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            rc = None
            record["status"] = "timeout"
        record.update(returncode=rc, seconds=round(time.monotonic() - start, 1))
        self.log.write(output)
        if record["status"] != "ok":
            record["tail"] = output[-1500:]
        record["output"] = output  # parsed by the caller, dropped before saving
        return record

    def _close(self, phase: str, record: dict) -> dict:
        record.pop("output", None)
        self.result["phases"][phase] = record
        took = f" ({record['seconds']} s)" if "seconds" in record else ""
        self.say(f"   {phase}: {record['status']}{took}")
        self.save()
        return record

    # ---- phases ------------------------------------------------------------------------------

    def environment(self) -> None:
        probe = (
            "import json, importlib.util as u, torch\n"
            "cuda = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
            " 'cuda_available': cuda,\n"
            " 'device': torch.cuda.get_device_name() if cuda else 'cpu',\n"
            " 'device_count': torch.cuda.device_count(),\n"
            " 'memory_gib': torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda\n"
            "   else None,\n"
            " 'bf16': cuda and torch.cuda.is_bf16_supported(),\n"
            " **{m: u.find_spec(m) is not None for m in\n"
            "    ('flash_attn', 'triton', 'mwparserfromhell', 'transformers')}}))\n"
        )
        record = self.run("environment", [sys.executable, "-c", probe], BUDGET["environment"])
        if record["status"] == "ok":
            record["found"] = json.loads(record["output"].strip().splitlines()[-1])
        record["python"] = platform.python_version()
        record["cpus"] = os.cpu_count()
        if shutil.which("nvidia-smi") and not self.dry_run:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            record["nvidia_smi"] = smi.stdout.strip()
        self._close("environment", record)

    def benchmark(self) -> None:
        bench = self.work / "bench.json"
        command = [sys.executable, "benchmarks/run.py", "--only", "cuda", "--json", bench]
        command += ["--device", "cpu", "--dry-run"] if self.dry_run else ["--device", "cuda"]
        record = self.run("benchmark", command, BUDGET["benchmark"])
        if bench.exists():
            record["cases"] = json.loads(bench.read_text()).get("cuda", [])
        self._close("benchmark", record)

    def preprocess(self, data: Path | None) -> tuple[Path | None, list]:
        """WikiText-2 train as seq-128 shards, and the tokenizer flags pretrain needs with them.

        Without the shared data (a lent machine gets only the checkout), the corpus is the
        bundled sample (5% of WikiText-2) with a WordPiece vocabulary trained on it here.
        """
        workers = str(min(16, os.cpu_count() or 1))
        if data is not None:
            corpus = data / "wikitext-2" / "train.txt"
            tokenizer = ["--vocab-file", data / "vocab" / "bert-base-uncased.txt"]
            dupe = "2"
        else:
            corpus = SAMPLE
            tok_dir = self.work / "tokenizer"
            command = [
                sys.executable, "-m", "bertcli", "build-tokenizer", "--train-data", corpus,
                "--vocab-size", "8000", "--out", tok_dir,
            ]  # fmt: skip
            record = self.run("tokenizer", command, BUDGET["tokenizer"])
            record["reason"] = "no shared data: the bundled sample's own WordPiece"
            self._close("tokenizer", record)
            if record["status"] != "ok":
                return None, []
            tokenizer, dupe = ["--tokenizer", tok_dir], "10"
        if self.dry_run:  # the first 600 lines: a corpus of seconds
            small = self.work / "train-small.txt"
            small.write_text("".join(corpus.open(encoding="utf-8").readlines()[:600]))
            corpus, workers, dupe = small, "2", "1"
        shards = self.work / "shards128"
        command = [
            sys.executable, "-m", "bertcli", "preprocess", "--input", corpus, *tokenizer,
            "--out", shards, "--max-seq-length", "128", "--max-predictions-per-seq", "20",
            "--dupe-factor", dupe, "--workers", workers, "--json",
        ]  # fmt: skip
        record = self.run("preprocess", command, BUDGET["preprocess"])
        record["corpus"] = str(corpus)
        if record["status"] == "ok":
            record["summary"] = _last_json(record["output"])
        self._close("preprocess", record)
        return (shards, tokenizer) if record["status"] == "ok" else (None, [])

    def pretrain(self, shards: Path | None, tokenizer: list) -> None:
        if shards is None:
            self._close("pretrain", {"status": "skipped", "reason": "no shards (see preprocess)"})
            return
        run = self.work / "run"
        size = (
            ["--preset", "tiny", "--max-steps", "6", "--batch-size", "8", "--log-every", "2",
             "--device", "cpu", "--precision", "fp32"]
            if self.dry_run
            else ["--preset", "base", "--max-steps", "300", "--batch-size", "256",
                  "--log-every", "25", "--device", "cuda", "--precision", "bf16",
                  "--num-workers", "4"]
        )  # fmt: skip
        command = [
            sys.executable, "-m", "bertcli", "pretrain", "--data-preprocessed",
            "--train-data", shards, *tokenizer, "--out", run, *size,
            "--lr", "2e-4", "--warmup-ratio", "0.1", "--json",
        ]  # fmt: skip
        record = self.run("pretrain", command, BUDGET["pretrain"])
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            train = [r for r in rows if "split" not in r]
            record["losses"] = {r["step"]: r["loss"] for r in train}
            record["mfu"] = {r["step"]: r["mfu"] for r in train}
            record["tokens_per_s"] = {r["step"]: r["tokens_per_s"] for r in train}
            if len(train) >= 2:
                record["loss_first"], record["loss_last"] = train[0]["loss"], train[-1]["loss"]
                record["loss_falling"] = train[-1]["loss"] < train[0]["loss"]
            warm = [r["mfu"] for r in train[1:] if r["mfu"] is not None]  # after the first window
            record["mfu_median"] = statistics.median(warm) if warm else None
        self._close("pretrain", record)

    def tests(self) -> None:
        figures = self.work / "figures"
        figures.mkdir()
        # the quick, basic checks first (if time runs out, the compile test is what is lost);
        # then the directory, for any file not named (pytest drops the repeats)
        first = ["parity", "optimizers", "no_sync", "mfu", "memory", "distributed"]
        command = [
            sys.executable, "-m", "pytest", "-m", "gpu",
            *[f"tests/gpu/test_{name}.py" for name in first], "tests/gpu",
            "-q", "-rs", "-p", "no:cacheprovider", "--durations=10",
        ]  # fmt: skip
        record = self.run("tests", command, env={"BERTCLI_GPU_OUT": str(figures)})
        # pytest exits 0 with all passed; on a CPU (dry run) every test is skipped, also 0
        counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", record["output"])
        record["counts"] = {kind: int(n) for n, kind in counts}
        record["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", record["output"], re.M)
        if (figures / "tests.json").exists():
            record["figures"] = json.loads((figures / "tests.json").read_text())
        self._close("tests", record)

    def summarise(self) -> None:
        """The headline figures: benchmark MFU per case, pretrain MFU against the benchmark's."""
        phases = self.result["phases"]
        cases = phases.get("benchmark", {}).get("cases", [])
        summary: dict = {
            "device": phases.get("environment", {}).get("found", {}).get("device"),
            "mfu": {f"{c['preset']}/{c['seq']}": c["mfu"] for c in cases},
        }
        pretrain = phases.get("pretrain", {})
        # the case the pretrain phase repeats: base/128 (tiny/128 in a dry run)
        bench = next((c for c in cases if c["seq"] == 128), None)
        logged = pretrain.get("mfu_median")
        if bench and bench.get("mfu") and logged:
            summary["pretrain_mfu_over_benchmark"] = logged / bench["mfu"]
            summary["pretrain_mfu_within_10pct"] = abs(logged / bench["mfu"] - 1) <= 0.10
        summary["loss_falling"] = pretrain.get("loss_falling")
        summary["failed_phases"] = [n for n, p in phases.items() if p.get("status") != "ok"]
        self.result["summary"] = summary
        self.result["seconds"] = round(time.monotonic() - (self.end - self.result["deadline_s"]), 1)
        self.save()


def _last_json(output: str):
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--deadline", type=float, default=440.0, help="seconds for all phases")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.dry_run, args.deadline)
    try:
        check.environment()
        check.benchmark()
        shards, tokenizer = check.preprocess(find_data())
        check.pretrain(shards, tokenizer)
        check.tests()
    finally:
        check.summarise()
        shutil.rmtree(check.work, ignore_errors=True)
        check.say(f"wrote {args.out / JSON_NAME} and {args.out / LOG_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
