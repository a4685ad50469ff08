#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the tested,
# pinned versions from constraints.txt. Safe to run repeatedly: it only reinstalls
# when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EMIT_VENV:-.venv}
stamp="$VENV/.emit-installed"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# constraints.txt pins torch==2.14.1 / torchvision==0.29.1 so pip never pulls a newer torch.
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
