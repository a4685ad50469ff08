#!/usr/bin/env bash
# Wall time and peak memory of the default CLI configuration on all 855 fashion-pairing
# products: train, then predict every product, with an empty feature cache (cold start).
#   bash benchmarks/pairing_full_run.sh [DATA]   -> benchmarks/results/pairing_full_run.txt
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/fashion-pairing/train}
WORK=$(mktemp -d)
EMIT=${EMIT:-.venv/bin/emit}
out=benchmarks/results/pairing_full_run.txt
{
  echo "# $(date -u +%F) $(nproc) cores; data $DATA; cold feature cache"
  /usr/bin/time -f "train: %e s wall, %M KB peak RSS" \
    "$EMIT" pair train "$DATA" --out "$WORK/model" --cache-dir "$WORK/cache" -q > "$WORK/train.json"
  /usr/bin/time -f "predict: %e s wall, %M KB peak RSS" \
    "$EMIT" pair predict "$WORK/model" "$DATA" --out "$WORK/final_json.json" --cache-dir "$WORK/cache" -q \
    > "$WORK/predict.json"
  echo "train summary:   $(tr -d '\n ' < "$WORK/train.json")"
  echo "predict summary: $(tr -d '\n ' < "$WORK/predict.json")"
} 2>&1 | tee "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$WORK"
