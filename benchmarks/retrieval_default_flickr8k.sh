#!/usr/bin/env bash
# `emit retrieval train` with no settings flags on the Flickr8k development images, in English
# and in Chinese (Flickr8k-CN), then `emit retrieval evaluate --held-out` on the images each run
# held out for validation (10 %, by a hash of the image name). Times the cold part (extracting
# the Lite0 + Lite2 features into the cache) apart from the training, which reads them from the cache.
#   bash benchmarks/retrieval_default_flickr8k.sh [WORK_DIR]
# Writes benchmarks/results/retrieval_default_flickr8k.json (the summaries, reports and times).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/flickr8k
WORK=${1:-/tmp/emit-default-flickr8k}
EMIT=${EMIT:-.venv/bin/emit}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
now() { date +%s.%N; }

t0=$(now)
BACKBONE=$("$PY" -c "from emit.retrieval.config import RetrievalConfig; print(RetrievalConfig().backbone)")
"$EMIT" features extract "$DATA/images" --backbone "$BACKBONE" --out "$WORK/shards" --cache-dir "$WORK/cache" \
    -q > "$WORK/extract.json"
t1=$(now)
for lang in en zh; do
    file=$DATA/Flickr8k.token.txt
    [ "$lang" = zh ] && file=$DATA/Flickr8k-CN.token.txt
    s=$(now)
    "$EMIT" retrieval train --titles "$file" --image-root "$DATA/images" --out "$WORK/run-$lang" \
        --cache-dir "$WORK/cache" -q > "$WORK/train-$lang.json"
    e=$(now)
    echo "{\"train_wall_seconds\": $(echo "$e - $s" | bc)}" > "$WORK/time-$lang.json"
    "$EMIT" retrieval evaluate "$WORK/run-$lang" --captions "$file" --image-root "$DATA/images" \
        --held-out --cache-dir "$WORK/cache" --out "$WORK/eval-$lang" -q > "$WORK/eval-$lang.json"
done
"$PY" - "$WORK" "$t0" "$t1" <<'PY'
import datetime, json, os, sys
from pathlib import Path

work, t0, t1 = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
result = {"command": "bash benchmarks/retrieval_default_flickr8k.sh", "cpus": os.cpu_count(),
          "extract_wall_seconds": round(t1 - t0, 1),
          "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
for lang in ("en", "zh"):
    result[lang] = {"train": json.loads((work / f"train-{lang}.json").read_text()),
                    **json.loads((work / f"time-{lang}.json").read_text()),
                    "evaluate": json.loads((work / f"eval-{lang}.json").read_text())}
out = Path("benchmarks/results/retrieval_default_flickr8k.json")
tmp = out.with_suffix(".json.tmp")
tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
os.replace(tmp, out)
print(json.dumps({k: result[k] for k in ("extract_wall_seconds",)} |
                 {lang: result[lang]["train_wall_seconds"] for lang in ("en", "zh")}))
PY
