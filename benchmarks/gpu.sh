#!/usr/bin/env bash
# The prepared GPU check: at most 8 minutes on one H100/H200, no network.
#
#   benchmarks/gpu.sh              on a GPU: every phase, figures in $OUT/gpu.json, log $OUT/gpu.log
#   benchmarks/gpu.sh --dry-run    the same entry points at tiny sizes on the CPU (CI runs this)
#   python benchmarks/gpu_table.py $OUT/gpu.json    then: the README's GPU table (markdown)
#
# $OUT defaults to ./gpu-out; $PYTHON to python3 (the image's Python: its torch is left alone).
# The phases and their budgets are in benchmarks/gpu_check.py; a failing phase is recorded in the
# JSON and the next one runs.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
PYTHON="${PYTHON:-python3}"
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ${#DRY[@]} -eq 0 ]; then
  # into the image's Python without touching its torch; if pip cannot (no setuptools, a
  # read-only site), PYTHONPATH above runs bertcli from src/ all the same
  timeout 30 "$PYTHON" -m pip install --no-deps --no-build-isolation -q -e . >>"$OUT/gpu.log" 2>&1 \
    || echo "pip install -e . did not complete: running bertcli from src/ (PYTHONPATH)" >>"$OUT/gpu.log"
fi
# 30 s for pip + 445 s here: under 8 minutes whatever happens inside
exec timeout -k 5 440 "$PYTHON" benchmarks/gpu_check.py --out "$OUT" --deadline 425 "${DRY[@]}"
