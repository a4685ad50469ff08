"""Turn ../shared/data/fashion-retrieval into extra labelled images for `emit pair train --extra`.

Each fashion-retrieval photo has a short query, "<gender> <colour> <garment>" ("men navy blue
shirt"), and a title whose first word is the brand. This writes one JSON line per photo,
``{"image": <absolute path>, "tag": "<Chinese colour>色<Chinese garment>", "group": "<brand>|<gender>"}``,
the form `--extra` reads, so a brand's photos for one gender form a pseudo-product, as the
products of fashion-pairing-mixed do.

* The Chinese colour of each English catalogue colour is read off fashion-pairing itself: the
  label its tags carry most often (items.jsonl gives every image's English colour).
* Garments are a fixed English -> Chinese table of the garment words in the pairing tags.
* Photos that are also images of a product of the evaluated set (the same file, or the same
  bytes) are left out, so no validation image is ever trained on. `--exclude` names the sets
  (both by default; one set's file for that set's benchmark keeps the other set's photos).

    python benchmarks/pairing_extra_catalogue.py --out /tmp/emit-extra/catalogue.jsonl
    python benchmarks/pairing_extra_catalogue.py --exclude fashion-pairing-mixed --out /tmp/x/mixed.jsonl
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"

# garment words of the queries -> the garment labels of the Chinese pairing tags
GARMENTS = {
    "tshirts": "T恤", "tshirt": "T恤", "t-shirt": "T恤", "t-shirts": "T恤", "shirts": "衬衫", "shirt": "衬衫",
    "tops": "上衣", "top": "上衣", "kurtas": "上衣", "kurta": "上衣", "kurtis": "上衣", "kurti": "上衣",
    "casual shoes": "鞋", "sports shoes": "鞋", "formal shoes": "鞋", "shoes": "鞋", "shoe": "鞋",
    "flats": "鞋",
    "sandals": "凉鞋", "sandal": "凉鞋", "sports sandals": "凉鞋", "heels": "高跟鞋", "wedges": "高跟鞋",
    "flip flops": "拖鞋", "flops": "拖鞋", "slippers": "拖鞋", "slipper": "拖鞋", "socks": "袜子",
    "sweaters": "毛衣", "sweater": "毛衣", "sweatshirts": "卫衣", "sweatshirt": "卫衣",
    "jackets": "外套", "jacket": "外套", "blazers": "外套", "trousers": "长裤", "trouser": "长裤",
    "track pants": "长裤", "pants": "长裤", "pant": "长裤", "jeans": "牛仔裤", "shorts": "短裤",
    "belts": "腰带", "belt": "腰带", "backpacks": "双肩包", "backpack": "双肩包", "handbags": "手提包",
    "handbag": "手提包", "clutches": "包", "clutch": "包", "bag": "包", "bags": "包", "wallets": "钱包",
    "wallet": "钱包", "caps": "帽子", "cap": "帽子", "hat": "帽子", "watches": "手表", "watch": "手表",
    "sunglasses": "太阳镜", "dresses": "连衣裙", "dress": "连衣裙", "skirts": "半身裙", "skirt": "半身裙",
}
GENDERS = ("men", "women", "boys", "girls", "unisex")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def colour_words(pairing: Path) -> dict[str, str]:
    """English catalogue colour -> the Chinese colour word its fashion-pairing tags use most."""
    from emit.text.labels import segment

    tag_of = {}
    for profile in (pairing / "train").glob("*/profile.json"):
        for item in json.loads(profile.read_text(encoding="utf-8"))["imgs_tags"]:
            ((name, tag),) = item.items()
            tag_of[name] = tag
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in (pairing / "items.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["image"] in tag_of:
            counts[row["colour_en"].lower()].update(segment(tag_of[row["image"]]))
    return {colour: c.most_common(1)[0][0] for colour, c in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/emit-extra/catalogue.jsonl"))
    ap.add_argument("--exclude", action="append", default=None,
                    help="pairing sets whose images are left out (default: both)")
    args = ap.parse_args()
    excluded = args.exclude or ["fashion-pairing", "fashion-pairing-mixed"]
    colours = colour_words(args.data / "fashion-pairing")
    by_length = sorted(colours, key=len, reverse=True)  # "navy blue" before "blue"
    paired = [p for d in excluded for p in (args.data / d / "train").rglob("*.jpg")]
    paired_files = {p.resolve() for p in paired}
    paired_bytes = {sha256(p) for p in paired}
    root = args.data / "fashion-retrieval"
    titles = {json.loads(line)["image"]: json.loads(line)["text"]
              for line in (root / "titles.jsonl").read_text(encoding="utf-8").splitlines()}
    kept, skipped = [], collections.Counter()
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        image = (root / row["image"]).resolve()
        if image in paired_files or sha256(image) in paired_bytes:
            skipped["a pairing product's image"] += 1
            continue
        words = row["text"].lower().split()
        gender = words[0] if words and words[0] in GENDERS else ""
        rest = " ".join(words[1:] if gender else words)
        colour = next((c for c in by_length if rest.startswith(c + " ")), None)
        title = titles.get(row["image"], "").lower().split()
        # the query names a category ("topwear") for some photos; the title's last words the garment
        named = [rest[len(colour) + 1:]] if colour else []
        garment = next((GARMENTS[g] for g in [*named, " ".join(title[-2:]), " ".join(title[-1:])]
                        if g in GARMENTS), None)
        if colour is None or garment is None:
            skipped["colour or garment not in the tables"] += 1
            continue
        brand = title[:1]
        tag = f"{colours[colour]}色{garment}" if len(colours[colour]) == 1 else f"{colours[colour]}{garment}"
        kept.append({"image": str(image), "tag": tag, "group": f"{(brand or ['?'])[0].lower()}|{gender}"})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept), encoding="utf-8")
    groups = collections.Counter(k["group"] for k in kept)
    print(json.dumps({"out": str(args.out), "excluded": excluded, "images": len(kept), "groups": len(groups),
                      "skipped": dict(skipped), "tags": len({k["tag"] for k in kept})}, ensure_ascii=False))


if __name__ == "__main__":
    main()
