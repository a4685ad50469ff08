#!/usr/bin/env bash
# Wall time and peak memory of the default CLI configuration on both pairing sets: for each, train,
# then predict every product, starting from an empty feature cache (cold start, CNN included).
#   bash benchmarks/pairing_full_run.sh [DATA...]   -> benchmarks/results/pairing_full_run.txt
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- ../shared/data/fashion-pairing/train ../shared/data/fashion-pairing-mixed/train
fi
WORK=$(mktemp -d)
EMIT=${EMIT:-.venv/bin/emit}
out=benchmarks/results/pairing_full_run.txt
start=$(date +%s)
{
  echo "# $(date -u +%F) $(nproc) cores; data $*; one cold feature cache"
  for DATA in "$@"; do
    name=$(basename "$(dirname "$DATA")")
    echo "## $name"
    /usr/bin/time -f "train: %e s wall, %M KB peak RSS" \
      "$EMIT" pair train "$DATA" --out "$WORK/$name-model" --cache-dir "$WORK/cache" -q > "$WORK/train.json"
    /usr/bin/time -f "predict: %e s wall, %M KB peak RSS" \
      "$EMIT" pair predict "$WORK/$name-model" "$DATA" --out "$WORK/$name/final_json.json" \
      --cache-dir "$WORK/cache" -q > "$WORK/predict.json"
    echo "train summary:   $(tr -d '\n ' < "$WORK/train.json")"
    echo "predict summary: $(tr -d '\n ' < "$WORK/predict.json")"
  done
  echo "total: $(( $(date +%s) - start )) s wall for $# sets"
} 2>&1 | tee "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$WORK"
