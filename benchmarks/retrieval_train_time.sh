#!/usr/bin/env bash
# Wall time of `emit retrieval train` with the default configuration on the fashion data, with
# the image features already in the cache (run any fashion benchmark, or this script, once to
# fill it). Writes benchmarks/results/retrieval_train_time.json.
#   bash benchmarks/retrieval_train_time.sh [CACHE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/fashion-retrieval
CACHE=${1:-/tmp/emit-bench-cache/features}
OUT=$(mktemp -d)
EMIT=${EMIT:-.venv/bin/emit}
# warm the cache (and the page cache) first; the timed run below then reads features only
"$EMIT" retrieval train --titles "$DATA/titles.jsonl" --clicks "$DATA/queries.jsonl" --out "$OUT/warm" \
    --cache-dir "$CACHE" --epochs 1 -q > /dev/null
start=$(date +%s.%N)
"$EMIT" retrieval train --titles "$DATA/titles.jsonl" --clicks "$DATA/queries.jsonl" --out "$OUT/run" \
    --cache-dir "$CACHE" -q > "$OUT/summary.json"
end=$(date +%s.%N)
python3 - "$OUT/summary.json" "$start" "$end" <<'PY'
import json, sys, datetime, os
summary = json.load(open(sys.argv[1]))
result = {"command": "emit retrieval train --titles titles.jsonl --clicks queries.jsonl (defaults, cached features)",
          "wall_seconds": round(float(sys.argv[3]) - float(sys.argv[2]), 1), "summary": summary,
          "cpus": os.cpu_count(), "load_1min_after": os.getloadavg()[0],
          "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
tmp = "benchmarks/results/retrieval_train_time.json.tmp"
json.dump(result, open(tmp, "w"), indent=1)
os.replace(tmp, "benchmarks/results/retrieval_train_time.json")
print(json.dumps({k: result[k] for k in ("wall_seconds", "load_1min_after")}))
PY
rm -rf "$OUT"
