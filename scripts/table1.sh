#!/usr/bin/env bash
# Paper Table 1 (multimodal regression): 2 and 3 modes x {MAML, Multi-MAML, MuMoMAML softmax/sigmoid/FiLM},
# the paper's settings (--preset paper) except the iteration budget. Every run goes to the
# background (nohup, nice, one thread each) and writes $OUT/<run>/: run.json, log.jsonl,
# checkpoint.ckpt (every 250 iterations), and at the end model.pt, metrics.json, figures/.
# Running the script again resumes unfinished runs from their checkpoints (and a larger
# ITERATIONS extends finished ones). Collect with: python scripts/collect_table1.py
#
# Usage (with the environment that has torch active, or PYTHON=/path/to/python):
#   scripts/table1.sh [ITERATIONS] [RUN_NAME_FILTER]   (default 5000, all runs)
# The authors' released task family (unit-frequency sinusoids) into its own folder:
#   OUT=results/regression_authors_tasks EXTRA="--task-family authors-code" scripts/table1.sh 70000
# Environment: OUT (default results/regression), EXTRA (more `train` arguments, e.g.
# "--time-limit 3600"), NICE (default 10), WAIT=1 (block until every run has ended).
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${1:-5000}
FILTER=${2:-}
OUT=${OUT:-results/regression}
read -r -a EXTRA_ARGS <<<"${EXTRA:-}"

launch() {
  local name=$1
  shift
  [[ -n "$FILTER" && "$name" != *$FILTER* ]] && return 0
  mkdir -p "$OUT/$name"
  local resume=()
  [[ -f "$OUT/$name/checkpoint.ckpt" ]] && resume=(--resume)
  echo "launching $name ($ITERS iterations${resume:+, resuming})"
  OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" nohup nice -n "${NICE:-10}" \
    "${PYTHON:-python}" -m mumo_fast.cli train regression "$@" --preset paper \
    --iterations "$ITERS" --seed 0 --threads 1 --checkpoint-every 250 --quiet \
    --no-tensorboard --out "$OUT/$name" "${resume[@]}" "${EXTRA_ARGS[@]}" \
    >>"$OUT/$name/stdout.log" 2>&1 &
}

for m in 2 3; do
  launch "film_${m}modes" --method mumomaml --modulation film --modes "$m"
  launch "maml_${m}modes" --method maml --modes "$m"
  launch "multimaml_${m}modes" --method multi-maml --modes "$m"
  launch "sigmoid_${m}modes" --method mumomaml --modulation sigmoid --modes "$m"
  launch "softmax_${m}modes" --method mumomaml --modulation softmax --modes "$m"
done
if [[ "${WAIT:-0}" == 1 ]]; then
  wait
fi
