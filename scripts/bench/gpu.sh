#!/usr/bin/env bash
# Every GPU check in one run (≤ 10 min on one H100/H200), for a short GPU slot.
#
#   bash scripts/bench/gpu.sh [OUT_DIR]          # on the GPU machine, from the repository root
#
# 1. the card (nvidia-smi) and the torch build;
# 2. CUDA vs CPU agreement in float64 (tests/model/test_cuda.py: energy, forces, stress, dipole,
#    polarizability; both backbone variants, both neighbour-sum paths);
# 3. inference throughput (energy + forces, float32) of mlip and of MACE (where mace-torch
#    imports), interleaved in one session (scripts/bench/run.py inference --device cuda);
# 4. a GPU training run on ethanol (configs/accurate.yaml, TRAIN_MIN minutes, default 4) and its
#    test errors, to set next to the CPU learning curve (BENCHMARKS.md section 1);
# 5. (only when STEPS names it) train_step: the cost of one mlip training step on acetylacetone
#    by batch size (scripts/bench/train_step_cost.py: ms/step, structures/s, ops/step);
# 6. (only when STEPS names it) curves: learning curves on acetylacetone on the GPU, every arm of
#    CURVE_ARMS and every seed of CURVE_SEED (comma-separated) trained side by side on the one card
#    for CURVE_MIN minutes (the same run.py curves runs as on the CPU, --device cuda), test errors at
#    snapshots. An arm is CODE:SIZE:VARIANT:OVERRIDES, e.g. mlip:medium:w10bs32:training.batch_size=32
#    (mlip arms: configs/accurate.yaml's own loss weights plus the overrides, comma-separated); the
#    default "mlip:medium:w10rs8: mace:large::" is both codes' section-1 set-up (MACE: its recipe;
#    "w10rs8" names accurate.yaml with its element-pair radial functions, as section 1's rows do).
#
# A GPU image usually has torch (and torch-geometric) but not ase, matscipy or mace-torch, and often
# no internet. Prepare here, with internet, then carry .whl and .gpu-bench to the GPU machine:
#   bash scripts/bench/gpu.sh --fetch-wheels      # python 3.12 manylinux wheels → .whl/
#   bash scripts/bench/gpu.sh --prepare-models    # small ethanol/carbon models of both codes → .gpu-bench/
# (the throughput models only need the right architecture, not accuracy; training them here saves
# GPU time). This script installs .whl/ into /tmp/site when it exists.
# Every step has its own time limit and a failed step does not stop the later ones; the summary at
# the end says which passed. Results: OUT_DIR (default /tmp/mlip-gpu), and where $OUT is set (the
# device tool's folder that comes back) one archive of them, $OUT/gpu_results.tgz, plus the summary.
# Environment: DEVICE (default cuda; cpu for a dry run of this script), TRAIN_MIN (whole minutes),
# CURVE_MIN and CURVE_MARKS (step 6; default 6 and 1,2,4,6), CURVE_THREADS (CPU threads per run,
# default 4), CURVE_ARMS and CURVE_SEED (step 6), STEPS (the steps to run, default
# "device cuda_vs_cpu inference train_ethanol"),
# DEADLINE_S (default 570: no step runs past it, so the archive is written inside a 10-min slot),
# PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
BENCH_WORK=/tmp/mlip-gpu-bench   # run.py's --work-dir; the prepared models' paths point here

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    # mace-torch and what it needs beyond a CUDA image's packages (torch, numpy, scipy, h5py,
    # torchmetrics, pandas, matplotlib, opt-einsum are there)
    for pkg in ase matscipy mace-torch e3nn==0.4.4 torch-ema opt-einsum-fx configargparse \
        prettytable wcwidth lmdb orjson; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${plat[@]}" -d .whl "$pkg" \
            || python3 -m pip download -q --no-deps -d .whl "$pkg" || echo "gpu.sh: no wheel for $pkg"
    done
    python3 -m pip wheel -q --no-deps -w .whl python-hostlist  # sdist only: build the wheel here
    ls .whl
    exit 0
fi
if [[ "${1:-}" == "--prepare-models" ]]; then
    grep -qx "/.gpu-bench/" .git/info/exclude 2>/dev/null || echo "/.gpu-bench/" >> .git/info/exclude
    python3 scripts/bench/run.py inference --codes mlip,mace --peers-python "${PEERS_PYTHON:-/work/peers/bin/python}" \
        --work-dir "$BENCH_WORK" --results "$BENCH_WORK/results" --molecule-batches 1 --periodic-atoms 64 \
        --rounds 1 --round-seconds 0.05 --threads 2 || exit 1
    rm -rf .gpu-bench && mkdir -p .gpu-bench && cp -r "$BENCH_WORK/models" .gpu-bench/
    du -sh .gpu-bench
    exit 0
fi

OUT_DIR=${1:-/tmp/mlip-gpu}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TRAIN_MIN=${TRAIN_MIN:-4}
CURVE_MIN=${CURVE_MIN:-6}
CURVE_MARKS=${CURVE_MARKS:-1,2,4,6}
CURVE_THREADS=${CURVE_THREADS:-4}
CURVE_SEED=${CURVE_SEED:-0}
# step 6's arms, CODE:SIZE:VARIANT:OVERRIDE,OVERRIDE (mlip: configs/accurate.yaml's weights + overrides)
CURVE_ARMS=${CURVE_ARMS:-mlip:medium:w10rs8: mace:large::}
STEPS=${STEPS:-device cuda_vs_cpu inference train_ethanol}
DEADLINE_S=${DEADLINE_S:-570}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d .whl ]]; then
    # this checkout first; a wheel's top-level "tests" package would shadow ours (a regular package
    # wins over the repository's namespace package whatever the path order), so it goes
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && rm -rf /tmp/site/tests && export PYTHONPATH="$PYTHONPATH:/tmp/site" || echo "gpu.sh: installing .whl failed"
fi
PEERS_PY=$(command -v "$PY")  # run.py wants a path
if [[ -d .gpu-bench/models && ! -e "$BENCH_WORK" ]]; then
    ln -s "$PWD/.gpu-bench" "$BENCH_WORK"
fi
declare -A STATUS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    if [[ " $STEPS " != *" $name "* ]]; then
        return
    fi
    local left=$((DEADLINE_S - SECONDS - 15))  # 15 s kept for the archive
    if ((left < 10)); then
        STATUS[$name]="skipped: deadline"
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    STATUS[$name]="rc=$rc, $((SECONDS - t0)) s"
}

step device 30 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PY -c 'import torch, mlip; print(torch.__version__, torch.cuda.is_available(), torch.cuda.is_available() and torch.cuda.get_device_name(0))'"
step cuda_vs_cpu 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/model/test_cuda.py
step inference 200 "$PY" scripts/bench/run.py inference --device "$DEVICE" --codes mlip,mace --peers-python "$PEERS_PY" \
    --results "$OUT_DIR/results" --work-dir "$BENCH_WORK" --molecule-batches 1,32,128 \
    --periodic-atoms 512,4096,10648 --peer-max-atoms 10648 --rounds 4 --round-seconds 1.0
step train_ethanol $((TRAIN_MIN * 60 + 90)) "$PY" -m mlip train configs/accurate.yaml -o device="$DEVICE" \
    -o output_dir="$OUT_DIR/ethanol" -o training.max_time_minutes="$TRAIN_MIN" \
    -o "training.snapshot_minutes=[0.5,1,2,$TRAIN_MIN]"
cp "$OUT_DIR/ethanol/metrics.csv" "$OUT_DIR/ethanol/test_metrics.json" "$OUT_DIR/" 2>/dev/null

curves_arms() {  # every arm at once on the one GPU, each its own work folder and results
    local arm code size variant overrides pids=()
    for arm in $CURVE_ARMS; do
        IFS=: read -r code size variant overrides <<< "$arm"
        local extra=(--sizes "$code=$size")
        if [[ $code == mlip ]]; then
            extra+=(--mlip-weights config --mlip-variant "$variant")
            local o
            for o in ${overrides//,/ }; do extra+=(--mlip-override "$o"); done
        fi
        local tag="${code}-${size}${variant:++$variant}" seed
        for seed in ${CURVE_SEED//,/ }; do  # one process per seed: all runs side by side
            "$PY" scripts/bench/run.py curves --tasks acac --codes "$code" "${extra[@]}" --seeds "$seed" \
                --budget-min "$CURVE_MIN" --marks "$CURVE_MARKS" --device "$DEVICE" --threads "$CURVE_THREADS" \
                --peers-python "$PEERS_PY" --work-dir "$OUT_DIR/curves_work_${tag}_s$seed" \
                --results "$OUT_DIR/curves_results_${tag}_s$seed" > "$OUT_DIR/curves_${tag}_s$seed.log" 2>&1 &
            pids+=($!)
        done
    done
    local rc=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    tail -n 5 "$OUT_DIR"/curves_*.log
    return $rc
}
export -f curves_arms
export PY CURVE_MIN CURVE_MARKS DEVICE CURVE_THREADS PEERS_PY OUT_DIR CURVE_SEED CURVE_ARMS
step train_step 120 "$PY" scripts/bench/train_step_cost.py --config configs/accurate.yaml --device "$DEVICE" \
    --batch-sizes 8,16,32,64 --threads 1 --json "$OUT_DIR/train_step_cost.json" -o data.train_file=data/acac/train_300K.xyz \
    -o data.test_file=null -o data.e0s=data/acac/isolated_atoms.xyz -o targets.energy.key=energy \
    -o targets.forces.key=forces -o logging.progress_bar=false
step curves $((CURVE_MIN * 60 + 120)) bash -c curves_arms

echo "=== summary"
for name in $STEPS; do
    echo "$name: ${STATUS[$name]:-not run}"
done | tee "$OUT_DIR/summary.txt"
if [[ -n "${OUT:-}" && "$OUT" != "$OUT_DIR" ]]; then
    tar czf "$OUT/gpu_results.tgz" -C "$OUT_DIR" --exclude='checkpoint*' --exclude='*.model' --exclude='*.pt' --exclude='*.xyz' . && cp "$OUT_DIR/summary.txt" "$OUT/"
fi
