#!/usr/bin/env bash
# Table 1 on a lent many-core machine: the 10 runs of scripts/table1.sh at once, one core
# each, each stopped by a time limit (then evaluated and plotted as usual), and a short
# CUDA check of the trainer on the side. The run folders come back as two archives in DEST.
#   scripts/table1_device.sh DEST SECONDS [RUN_NAME_FILTER]
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=$1
LIMIT=$2
FILTER=${3:-}
export PYTHON=${PYTHON:-python3} MUMO_FAST_NO_CPP=${MUMO_FAST_NO_CPP:-1}
RUNS=${RUNS:-/tmp/table1_runs}
rm -rf /tmp/smoke
mkdir -p "$DEST" "$RUNS"
"$PYTHON" -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), torch.get_num_threads())"
if ! "$PYTHON" -m mumo_fast.cli train regression --out /tmp/smoke --iterations 2 \
  --tasks-per-mode 2 --test-tasks-per-mode 5 --quiet --no-tensorboard --skip-eval; then
  echo "smoke run failed"
  exit 1
fi
OUT=$RUNS EXTRA="--time-limit $LIMIT" NICE=0 WAIT=1 scripts/table1.sh 70000 "$FILTER" &
TABLE=$!
(
  c="$PYTHON -m mumo_fast.cli train regression --device cuda --out /tmp/cuda_film --quiet --no-tensorboard --test-tasks-per-mode 200 --threads 1"
  timeout 240 $c --iterations 200 && timeout 60 $c --resume --iterations 250 --skip-eval
  echo "cuda check exit $?"
  tail -3 /tmp/cuda_film/log.jsonl
) >"$DEST/cuda_check.log" 2>&1 &
wait $TABLE
wait
for m in 2 3; do
  (cd "$RUNS" && ls -d *_${m}modes >/dev/null 2>&1) && tar czf "$DEST/table1_${m}modes.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls -d *_${m}modes)
done
cp -r /tmp/cuda_film/figures "$DEST/cuda_figures" 2>/dev/null
for d in "$RUNS"/*/; do tail -5 "$d/stdout.log"; done
for d in "$RUNS"/*/; do echo "$(basename "$d"): $(tail -1 "$d/log.jsonl" | cut -c1-120)"; done
ls -la "$DEST"
