#!/usr/bin/env bash
# The ONE GPU check of issue 9, for a machine with one NVIDIA GPU (H100/H200), a copy of this repo and no
# network. Python: the repo's .venv where it runs there, else the machine's python3 (which must hold torch,
# torchvision, numpy, pandas, pyarrow, pytest; without Ray and Optuna the sweep test skips, saying so).
# It runs, in this order, each under a hard time limit:
#   1. python -m bench --device cuda              (every GPU figure, saved to $OUT/bench.json after each
#      section: train img/s vs a bare loop, step ratios, the 2:4 latency table, 1/2/4 packed trials, the seed
#      estimate, torch.compile last)
#   2. python -m pytest tests/gpu                 (trials per method and set, no host sync per step, also after
#      a resume, the Loader on CUDA, exact resume, BN recalibration, a 2-trial sweep at 0.25 GPU each, 2:4
#      inference, and the bench figures read back from step 1)
# Everything it prints and writes lands in $OUT (default: ./gpu-check-out): env.txt, bench.log, bench.json,
# pytest.log, pytest.xml, summary.txt. Expected wall time: about 5 minutes; at most BENCH_TIMEOUT +
# TESTS_TIMEOUT seconds (300 + 270 by default: inside one 10-minute device call). Exit status 0 when both
# steps passed.
#
#   bash tests/gpu/run_gpu_check.sh                 # from the repo root (or anywhere: it finds the repo)
#   OUT=/some/dir bash tests/gpu/run_gpu_check.sh
set -u -o pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 2
OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT"
# the repo's venv where it runs here, else the machine's python3 (GPU images often carry torch but not Ray or
# Optuna: the sweep test then skips, saying so)
PY=python3
if [ -x "$REPO/.venv/bin/python" ] && "$REPO/.venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    PY="$REPO/.venv/bin/python"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0 TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1            # no network there: fail fast rather than hang on one
export PRUNESWEEP_BENCH_JSON="$OUT/bench.json"    # the pytest bench test reads step 1's figures
BENCH_TIMEOUT="${BENCH_TIMEOUT:-300}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-270}"
START=$(date +%s)

{
    echo "date: $(date -u +%FT%TZ)  host: $(hostname)  repo: $REPO"
    echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "python: $PY"
    "$PY" - <<'PY'
import importlib.util, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "| capability", torch.cuda.get_device_capability(),
          "| cuDNN", torch.backends.cudnn.version(), "| cuSPARSELt", torch.backends.cusparselt.is_available())
print("packages:", {m: importlib.util.find_spec(m) is not None for m in ("ray", "optuna", "pandas", "pyarrow",
                                                                        "torchvision", "pytest_timeout")})
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

rm -f "$OUT/bench.json"
echo "== 1/2: python -m bench --device cuda (limit ${BENCH_TIMEOUT}s)"
timeout -k 15 "$BENCH_TIMEOUT" "$PY" -m bench --device cuda --json "$OUT/bench.json" \
    --compile-timeout 120 --pack-timeout 90 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}

echo "== 2/2: python -m pytest tests/gpu (limit ${TESTS_TIMEOUT}s)"
PER_TEST=()
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then PER_TEST=(--timeout 240); fi
timeout -k 15 "$TESTS_TIMEOUT" "$PY" -m pytest tests/gpu -v -rs -p no:cacheprovider "${PER_TEST[@]}" \
    --junitxml "$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log"
TESTS_RC=${PIPESTATUS[0]}

{
    echo "bench exit $BENCH_RC (124: timed out)  tests exit $TESTS_RC (124: timed out)  wall $(( $(date +%s) - START )) s"
    grep -E "^(GPU|train|step time|torch.compile|packed|packing|seed experiment)" "$OUT/bench.log"
    tail -n 3 "$OUT/pytest.log"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
[ "$BENCH_RC" -eq 0 ] && [ "$TESTS_RC" -eq 0 ]
