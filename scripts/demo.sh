#!/usr/bin/env bash
# Set up .venv if needed, then run the pairing demo on generated products:
# draw garments with Chinese colour tags, train, predict held-out products, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
VENV=${EMIT_VENV:-.venv}
exec "$VENV/bin/emit" demo --out "${1:-demo-out}"
