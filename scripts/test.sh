#!/usr/bin/env bash
# Set up .venv if needed, then run lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV=${EMIT_VENV:-.venv}
"$VENV/bin/ruff" check src tests benchmarks
exec "$VENV/bin/python" -m pytest -q "$@"
