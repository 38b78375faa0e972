#!/usr/bin/env bash
# Install everything (dev extras) into .venv and run lint, type checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,scale]'
export LITELLM_LOCAL_MODEL_COST_MAP=True
.venv/bin/ruff check mva_dagster tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
