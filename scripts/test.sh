#!/usr/bin/env bash
# Install test tools, lint, and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
python3 -m ruff check mlip tests scripts
python3 -m ruff format --check mlip tests scripts
python3 -m pytest -q "$@"
