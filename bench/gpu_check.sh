#!/usr/bin/env bash
# One-shot GPU check of mumo_fast (run once on a lent GPU machine, no network):
#   bash bench/gpu_check.sh OUTDIR
# Stages, each writing to OUTDIR as soon as it finishes (a cut-off run still reports):
#   0. environment (nvidia-smi, versions)                        -> summary.txt
#   1. pip install --no-build-isolation --no-deps -e . (builds the C++ extension), in the
#      background; its outcome and log tail are appended to summary.txt at the end
#   2. CUDA tests: tests/test_triton_backend.py, then the generic ops tests -> pytest.log
#   3. bench/ops_gpu.py: per-op table                               -> ops_gpu.{json,md}
#   4. bench/meta_step_gpu.py: regression meta-step tasks/s         -> meta_step_gpu.{json,md}
#   5. the compiled inner loop on CUDA (inductor's Triton kernels; last, as its compile
#      time is the least known)                                     -> pytest.log
#   bench stdout/stderr                                             -> bench.log
# Seven files in all (the device tool returns at most 8). Designed to finish in < 8 min;
# each stage has its own timeout. Works from the source tree (PYTHONPATH), so a failed
# install does not stop the check.
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MUMO_FAST_NO_CPP=1 # tests and benches never JIT-build the CPU extension here
unset TRITON_INTERPRET
PY=${PYTHON:-python}
# DRY_RUN=1: tiny bench shapes (for checking this script on a CPU machine, where the
# kernels run under Triton's interpreter).
DRY=""
TASKS="75,1024"
if [ "${DRY_RUN:-0}" = 1 ]; then DRY="--dry-run" TASKS="3"; fi
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
log() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }

# Budgets (seconds); override with env vars for a longer run.
T_TRITON_TESTS=${T_TRITON_TESTS:-120}
T_OPS_TESTS=${T_OPS_TESTS:-60}
T_OPS_BENCH=${T_OPS_BENCH:-110}
T_META_BENCH=${T_META_BENCH:-75}
T_COMPILED_TESTS=${T_COMPILED_TESTS:-100}
T_PIP=${T_PIP:-330}

log "stage 0: environment"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>&1
  nvidia-smi 2>&1 | head -20
  $PY -V 2>&1
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1
  echo "cpus: $(nproc)"
  git log --oneline -1 2>/dev/null
} >>"$SUMMARY" 2>&1

PIP_LOG=$(mktemp)
if [ "${SKIP_PIP:-0}" = 1 ]; then
  log "stage 1: pip install skipped (SKIP_PIP=1)"
  (echo "skipped" >"$PIP_LOG") &
else
  log "stage 1: pip install -e . (background, timeout ${T_PIP}s)"
  (timeout -k 5 "$T_PIP" $PY -m pip install --no-build-isolation --no-deps -e . >"$PIP_LOG" 2>&1
    echo "pip exit code: $?" >>"$PIP_LOG") &
fi
PIP_PID=$!

log "stage 2a: pytest tests/test_triton_backend.py (timeout ${T_TRITON_TESTS}s)"
timeout -k 5 "$T_TRITON_TESTS" $PY -m pytest tests/test_triton_backend.py -v -rfEs --tb=short \
  --durations=15 -p no:cacheprovider >"$OUT/pytest.log" 2>&1
log "stage 2a exit code $? (124 = timeout); $(grep -E '^(FAILED|ERROR)|passed|failed' "$OUT/pytest.log" | tail -1)"

log "stage 2b: generic ops tests (timeout ${T_OPS_TESTS}s)"
OPS_TESTS=$(ls tests/test_ops_forward.py tests/test_ops_grad.py tests/test_ops_maml.py tests/test_linear_sgd.py 2>/dev/null)
OPS_LOG=$(mktemp)
echo "=================== generic ops tests:" $OPS_TESTS >>"$OUT/pytest.log"
timeout -k 5 "$T_OPS_TESTS" $PY -m pytest $OPS_TESTS -k triton -q -rfE --tb=line -p no:cacheprovider 2>&1 |
  tee "$OPS_LOG" >>"$OUT/pytest.log"
RC=${PIPESTATUS[0]}
log "stage 2b exit code $RC (124 = timeout); $(grep -E 'passed|failed' "$OPS_LOG" | tail -1)"
rm -f "$OPS_LOG"

log "stage 3: bench/ops_gpu.py (timeout ${T_OPS_BENCH}s)"
echo "=================== ops_gpu" >"$OUT/bench.log"
timeout -k 5 "$T_OPS_BENCH" $PY bench/ops_gpu.py $DRY --out "$OUT" --budget $((T_OPS_BENCH - 25)) \
  >>"$OUT/bench.log" 2>&1
log "stage 3 exit code $? (124 = timeout)"

log "stage 4: bench/meta_step_gpu.py (timeout ${T_META_BENCH}s)"
echo "=================== meta_step_gpu" >>"$OUT/bench.log"
timeout -k 5 "$T_META_BENCH" $PY bench/meta_step_gpu.py $DRY --out "$OUT" --tasks "$TASKS" \
  --loop-max-tasks 75 --budget $((T_META_BENCH - 20)) >>"$OUT/bench.log" 2>&1
log "stage 4 exit code $? (124 = timeout)"

log "stage 5: compiled inner loop on CUDA (timeout ${T_COMPILED_TESTS}s)"
echo "=================== compiled inner loop on CUDA" >>"$OUT/pytest.log"
timeout -k 5 "$T_COMPILED_TESTS" $PY -m pytest \
  tests/test_compiled_inner_loop.py::test_compiled_matches_loop_on_cuda -q -rfEs --tb=short \
  -p no:cacheprovider >>"$OUT/pytest.log" 2>&1
log "stage 5 exit code $? (124 = timeout); $(tail -1 "$OUT/pytest.log")"

if kill -0 "$PIP_PID" 2>/dev/null; then
  log "pip install still running: stopping it"
  kill "$PIP_PID" 2>/dev/null
  pkill -P "$PIP_PID" 2>/dev/null
fi
wait "$PIP_PID" 2>/dev/null
log "stage 1 (pip) log tail:"
tail -25 "$PIP_LOG" >>"$SUMMARY"
rm -f "$PIP_LOG"
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
