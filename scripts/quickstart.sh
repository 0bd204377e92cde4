#!/usr/bin/env bash
# The main job end to end on the shipped example data (about 5 minutes on 2 CPU cores):
# install, train an ethanol potential from configs/example.yaml, evaluate it on held-out
# structures, then run a short Langevin MD with the ASE calculator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OUT=${OUT:-runs/example}
mlip train configs/example.yaml -o output_dir="$OUT" "$@"
mlip eval "$OUT/model.pt" data/ethanol/test.xyz
python3 scripts/run_md.py "$OUT/model.pt" data/ethanol/test.xyz --steps 500 --temperature 300 \
    --trajectory "$OUT/md.traj"
