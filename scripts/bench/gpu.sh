#!/usr/bin/env bash
# Every GPU check in one run (≤ 10 min on one H100/H200), for a short GPU slot.
#
#   bash scripts/bench/gpu.sh [OUT_DIR]          # on the GPU machine, from the repository root
#
# 1. the card (nvidia-smi) and the torch build;
# 2. CUDA vs CPU agreement in float64 (tests/model/test_cuda.py: energy, forces, stress, dipole,
#    polarizability; both backbone variants, both neighbour-sum paths);
# 3. a short GPU training run on ethanol (configs/accurate.yaml, 4 min) and its test errors, so the
#    learning curve on a GPU can be compared with the CPU one (BENCHMARKS.md section 1);
# 4. inference throughput (energy + forces, float32) of mlip, and of MACE where mace-torch imports,
#    interleaved in one session (scripts/bench/run.py inference --device cuda).
#
# A GPU image usually has torch (and torch-geometric) but not ase, matscipy or mace-torch, and often
# no internet. Put their wheels in .whl/ first (here, with internet):
#   bash scripts/bench/gpu.sh --fetch-wheels      # python 3.12 manylinux wheels → .whl/
# and carry .whl to the GPU machine; this script installs them into /tmp/site when .whl/ exists.
# Every step has its own time limit and a failed step does not stop the later ones; the summary at
# the end says which passed. Results: OUT_DIR (default $OUT or /tmp/mlip-gpu).
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    for pkg in ase matscipy mace-torch e3nn==0.4.4 torch-ema opt-einsum-fx configargparse \
        python-hostlist torchmetrics prettytable wcwidth lmdb orjson h5py; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${plat[@]}" -d .whl "$pkg" \
            || python3 -m pip download -q --no-deps -d .whl "$pkg" || echo "gpu.sh: no wheel for $pkg"
    done
    ls .whl
    exit 0
fi

OUT_DIR=${1:-${OUT:-/tmp/mlip-gpu}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [[ -d .whl ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
declare -A STATUS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
}

step device 30 bash -c "nvidia-smi -L; $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))'"
step cuda_vs_cpu 150 "$PY" -m pytest -q -rs tests/model/test_cuda.py
step train_ethanol 330 "$PY" -m mlip train configs/accurate.yaml -o device=cuda -o output_dir="$OUT_DIR/ethanol" \
    -o training.max_time_minutes=4 -o training.snapshot_minutes=[1,2,4]
step inference 150 "$PY" scripts/bench/run.py inference --device cuda --codes mlip,mace --peers-python "$PY" \
    --results "$OUT_DIR/results" --work-dir /tmp/mlip-gpu-bench
cp "$OUT_DIR/ethanol/metrics.csv" "$OUT_DIR/ethanol/test_metrics.json" "$OUT_DIR/" 2>/dev/null

echo "=== summary"
for name in device cuda_vs_cpu train_ethanol inference; do
    echo "$name: ${STATUS[$name]:-not run}"
done | tee "$OUT_DIR/summary.txt"
