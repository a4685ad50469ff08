#!/usr/bin/env bash
# Every GPU check of emit, in one self-contained run on a GPU machine (about 5 minutes on one
# GPU). That machine has CUDA PyTorch, torchvision, numpy, scipy, pillow, safetensors, tqdm,
# pyarrow and pandas under its python3, but no package registry, so this script does not use
# the README's set-up: it installs the few missing wheels that benchmarks/gpu_wheels.sh
# downloaded beforehand into .gpu-wheels/ (on a machine with PyPI), and runs emit from src/
# without installing its dependencies. Data is generated; Ray is not needed.
#
#   bash benchmarks/gpu_wheels.sh      # here, once
#   bash benchmarks/gpu_check.sh       # there; figures in benchmarks/results/gpu_check.jsonl
#
# GPU_CHECK_ARGS passes flags on (e.g. "--device cpu --small" checks the script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/emit-gpu-site}
if [ -d .gpu-wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpu-wheels/*.whl
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
# shellcheck disable=SC2086
exec "$PY" benchmarks/gpu_check.py ${GPU_CHECK_ARGS:-} "$@"
