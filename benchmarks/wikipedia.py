"""`bertcli download wikipedia --input` side by side with WikiExtractor on the same dump.

    pip install -e '.[test]'    # brings wikiextractor, the reference (not a bertcli dependency)
    python benchmarks/wikipedia.py [--processes 2] [--repeats 3] [--json OUT]

Both run as command-line programs (Python start-up included for both), alternated, on
../shared/data/wikipedia/…-shortened.bz2 (206 pages, 106 articles), with the same number of
extraction processes. Reported: median wall seconds and their ratio; the article titles of both
(equal?); total words (whitespace split) and their ratio; markup residue per 1,000 words
(`{{ }} [[ ]] <ref &lt; {| |} '' <!-- [http`); CPU seconds of each process tree (less
sensitive to a busy machine than wall time); and the peak RSS of our main process with the
dump given once and four times, with `--workers 1` so that process does all the work (flat
memory: it never holds more than a batch of pages).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DUMP = (
    ROOT.parent
    / "shared"
    / "data"
    / "wikipedia"
    / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
RESIDUE = ("{{", "}}", "[[", "]]", "<ref", "&lt;", "{|", "|}", "''", "<!--", "[http")


def run(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (MiB) of the direct child, CPU seconds of it and its (joined)
    worker processes."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return seconds, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def records(directory: Path) -> list[dict]:
    """Every JSON line under `directory` (WikiExtractor: AA/wiki_00 …; ours: wiki_00000.jsonl)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def quality(recs: list[dict]) -> dict:
    words = sum(len(r["text"].split()) for r in recs)
    residue = {m: sum(r["text"].count(m) for r in recs) for m in RESIDUE}
    return {
        "articles": len(recs),
        "words": words,
        "residue": residue,
        "residue_per_1000_words": round(sum(residue.values()) / max(words, 1) * 1000, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        import wikiextractor  # noqa: F401
    except ImportError:
        raise SystemExit("pip install wikiextractor first (the reference here)") from None
    from importlib.metadata import version

    n = str(args.processes)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        theirs_cmd = [
            sys.executable, "-m", "wikiextractor.WikiExtractor", str(DUMP), "--json",
            "--processes", n, "-q", "-o", str(tmp / "we"),
        ]  # fmt: skip
        ours_cmd = [
            sys.executable, "-m", "bertcli", "download", "wikipedia", "--input", str(DUMP),
            "--out", str(tmp / "ours"), "--workers", n, "--json",
        ]  # fmt: skip
        theirs, ours, theirs_cpu, ours_cpu = [], [], [], []
        for _ in range(args.repeats):  # alternated, so load on a shared machine hits both
            seconds, _, cpu = run(theirs_cmd)
            theirs.append(seconds)
            theirs_cpu.append(cpu)
            seconds, _, cpu = run(ours_cmd)
            ours.append(seconds)
            ours_cpu.append(cpu)
        we, us = records(tmp / "we"), records(tmp / "ours")
        one = ours_cmd[:-3] + ["--workers", "1"]  # all work in the one measured process
        _, rss_1x, _ = run(one)
        _, rss_4x, _ = run(one + ["--input", str(DUMP)] * 3)
        assert len(records(tmp / "ours")) == 4 * len(us)

    we_titles, our_titles = [r["title"] for r in we], [r["title"] for r in us]
    result = {
        "dump": DUMP.name,
        "processes": args.processes,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "wikiextractor_version": version("wikiextractor"),
        "mwparserfromhell_version": version("mwparserfromhell"),
        "python": sys.version.split()[0],
        "wikiextractor_seconds": [round(s, 3) for s in theirs],
        "ours_seconds": [round(s, 3) for s in ours],
        "wikiextractor_median_s": round(statistics.median(theirs), 3),
        "ours_median_s": round(statistics.median(ours), 3),
        "speed_ratio": round(statistics.median(theirs) / statistics.median(ours), 3),
        "wikiextractor_cpu_median_s": round(statistics.median(theirs_cpu), 3),
        "ours_cpu_median_s": round(statistics.median(ours_cpu), 3),
        "cpu_ratio": round(statistics.median(theirs_cpu) / statistics.median(ours_cpu), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "titles_equal": sorted(we_titles) == sorted(our_titles),
        "titles_same_order": we_titles == our_titles,
        "wikiextractor": quality(we),
        "ours": quality(us),
        "ours_peak_rss_mib_1x": rss_1x,
        "ours_peak_rss_mib_4x": rss_4x,
    }
    result["word_ratio"] = round(result["ours"]["words"] / result["wikiextractor"]["words"], 4)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
