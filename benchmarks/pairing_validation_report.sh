#!/usr/bin/env bash
# The default pairing model through the command line on each set's validation split (emit split,
# seed 0, 20 %: fold 0 of benchmarks/pairing_defaults.py): train, predict with a review queue,
# evaluate with coverage and calibration. Keeps each report's JSON and PNG.
#   bash benchmarks/pairing_validation_report.sh   -> benchmarks/results/pairing_validation_<set>.{json,png}
set -euo pipefail
cd "$(dirname "$0")/.."
EMIT=${EMIT:-.venv/bin/emit}
WORK=$(mktemp -d)
CACHE=${CACHE:-$WORK/cache}
for set in fashion-pairing fashion-pairing-mixed; do
  "$EMIT" split "../shared/data/$set/train" --out "$WORK/$set.split.json" --materialise symlink \
    --into "$WORK/$set" -q > /dev/null
  "$EMIT" pair train "$WORK/$set/train" --out "$WORK/$set/model" --cache-dir "$CACHE" -q > /dev/null
  "$EMIT" pair predict "$WORK/$set/model" "$WORK/$set/val" --out "$WORK/$set/out/final_json.json" \
    --cache-dir "$CACHE" --review-below 0.9 -q
  "$EMIT" pair evaluate "$WORK/$set/out/final_json.json" "$WORK/$set/val" \
    --out "benchmarks/results/pairing_validation_$set"
done
rm -rf "$WORK"
