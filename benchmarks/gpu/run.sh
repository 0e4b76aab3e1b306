#!/usr/bin/env bash
# On the lent GPU machine, as ONE device `run` call after benchmarks/gpu/prepare.sh here:
#   command: bash benchmarks/gpu/run.sh     carry: [".whl", ".data"]     timeout_s: 590
# Runs issue 2's GPU benchmarks and issue 3's recommendation on the GPU, each under its own time
# cap so one slow part cannot take the others' time, and leaves their JSON, plots and logs in
# $OUT; copy them into benchmarks/results/ afterwards. probe_throughput and reproduce_paper write
# their JSON at the end only (a capped one returns its log); recommend_fmnist writes as it goes.
# Dry run here: PYTHON=.venv/bin/python GPU_RUN_SCALE=0.1 bash benchmarks/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/edgetune-gpu-out}
mkdir -p "$OUT/reproduce"
scale=${GPU_RUN_SCALE:-1}
cap() { python3 -c "print(max(5, int($1 * $scale)))"; }
PY=${PYTHON:-python3}
if ! $PY -c "import pydantic, optuna" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export EDGETUNE_DATA_ROOT=${EDGETUNE_DATA_ROOT:-$PWD/.data}
device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
mode=$([ "$device" = cuda ] && echo gpu || echo cpu)
{ nvidia-smi 2>&1 || true; $PY -c "import torch; print(torch.__version__)"; } >"$OUT/machine.txt"

# Issue 2: population of 32 vs the sequential loop (goal ≥ 8× on H100/H200), measurement cost.
SECONDS=0
timeout "$(cap 120)" $PY benchmarks/probe_throughput.py --device "$device" \
  --out "$OUT/probe_throughput_$mode.json" >"$OUT/probe_throughput.log" 2>&1
echo "probe_throughput: exit $? after $SECONDS s"
# Issue 2: the paper's length (60 epochs, 45 configs as 3 populations).
SECONDS=0
timeout "$(cap 300)" $PY benchmarks/reproduce_paper.py --mode "$mode" \
  --out "$OUT/reproduce" >"$OUT/reproduce_paper.log" 2>&1
echo "reproduce_paper: exit $? after $SECONDS s"
# Issue 3: the recommendation and its 3-seed verification on the GPU (the 40 + 40 baseline
# trials ran on CPU: benchmarks/results/recommend_fmnist_cpu.json).
SECONDS=0
timeout "$(cap 120)" $PY benchmarks/recommend_fmnist.py --mode "$mode" --skip-baselines \
  --out "$OUT/recommend_fmnist_$mode.json" >"$OUT/recommend_fmnist.log" 2>&1
echo "recommend_fmnist: exit $? after $SECONDS s"
ls -la "$OUT" "$OUT/reproduce"
