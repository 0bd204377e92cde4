#!/usr/bin/env bash
# Install mlip into the current Python environment.
#   bash scripts/install.sh          # package
#   bash scripts/install.sh --dev    # package + test tools (pytest, ruff)
# PyTorch: if torch is missing, a CUDA build is installed when an NVIDIA GPU is visible
# (nvidia-smi), otherwise the CPU build (no multi-GB CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "install.sh: NVIDIA GPU found, installing the CUDA build of torch ${TORCH_VERSION}"
        "$PY" -m pip install "torch==${TORCH_VERSION}"
    else
        echo "install.sh: no GPU found, installing the CPU build of torch ${TORCH_VERSION}"
        # First the +cpu build through pip's configured sources (a local CPU wheel via find-links,
        # its dependencies from the package index; fails fast where no +cpu build is reachable,
        # since PyPI has none), then the PyTorch CPU index.
        "$PY" -m pip install "torch==${TORCH_VERSION}+cpu" \
            || "$PY" -m pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
if [[ "${1:-}" == "--dev" ]]; then
    "$PY" -m pip install -q -e ".[dev]"
else
    "$PY" -m pip install -q -e .
fi
"$PY" -c "import torch, mlip; print(f'install.sh: mlip {mlip.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
