"""Choosing the hubness correction's beta on training-side data only (Flickr8k).

For each model row of benchmarks/retrieval_flickr8k.py named in MODELS (run that first: this
script loads its run folders from --work), the images emit held out for early stopping (its
inner --val-fraction split of the *training* images; the 1,000 reported images are not used)
are scored without the correction and with it in both directions for each beta in BETAS,
against the run's own bank (emit.retrieval.hubness; the bank holds the images and texts the
run trained on, so no validation image or text is in it). The chosen beta maximises the mean
over models and both directions of mean(R@1, R@5, R@10).

    python benchmarks/retrieval_flickr8k_hubness_beta.py --cache-dir /tmp/exp/rcache

Writes results/retrieval_flickr8k_hubness_beta.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_common import HERE, restrict, run_folder, side
from retrieval_flickr8k import ROWS, load

MODELS = ("infonce+projection", "minilm infonce+projection", "minilm infonce+projection lite0+lite2")
BETAS = (5.0, 10.0, 20.0, 40.0, 80.0)
DIRECTIONS = ("text_to_image", "image_to_text")


def inner_validation(name: str, cache_dir: Path, work: Path) -> dict[str, Any]:
    from emit.retrieval.config import RetrievalConfig
    from emit.retrieval.evaluate import evaluate_model
    from emit.retrieval.hubness import HubnessBank
    from emit.retrieval.pairs import Pairs
    from emit.retrieval.train import train_retrieval
    from emit.split import in_validation

    settings = ROWS[name]
    bench = load(cache_dir, settings.get("backbone", "efficientnet-lite0"))
    x_tr, keys_tr, tr = side(bench, test=False)
    config = RetrievalConfig(**settings)
    titles = tr["titles"]
    folder = work / run_folder(name)
    # the trained run is loaded, not trained again (its bank is written if it has none)
    model = train_retrieval(x_tr, Pairs(titles.texts, titles.rows), None, config, out=folder,
                            image_keys=keys_tr, progress=False)
    bank = HubnessBank.load(folder, model)
    held = np.array([in_validation(k, config.val_fraction, config.seed) for k in keys_tr])
    val = restrict(titles, held)
    out: dict[str, Any] = {"images": int(held.sum()), "captions": len(val.texts), "bank": bank.identity()}
    for beta in (None, *BETAS):
        report = evaluate_model(model, val.texts, val.rows, x_tr[held], bank=bank,
                                hubness="none" if beta is None else "both", beta=beta or 1.0)
        out["none" if beta is None else f"{beta:g}"] = {
            d: {k: round(float(report[d][k]), 2) for k in ("R@1", "R@5", "R@10")} for d in DIRECTIONS}
    return out


def mean3(m: dict[str, float]) -> float:
    return (m["R@1"] + m["R@5"] + m["R@10"]) / 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/emit-bench-cache/features"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/emit-bench-flickr8k"),
                    help="run folders of benchmarks/retrieval_flickr8k.py")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval_flickr8k_hubness_beta")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from emit.files import atomic_write_json, atomic_write_text

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {name: inner_validation(name, args.cache_dir, args.work) for name in MODELS}
    settings = ["none", *(f"{b:g}" for b in BETAS)]
    score = {s: float(np.mean([mean3(results[m][s][d]) for m in MODELS for d in DIRECTIONS]))
             for s in settings}
    chosen = max(BETAS, key=lambda b: score[f"{b:g}"])
    summary = {"models": results, "mean_R1_5_10": {s: round(v, 2) for s, v in score.items()},
               "chosen_beta": chosen, "helps": score[f"{chosen:g}"] > score["none"],
               "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_json(args.out.with_suffix(".json"), summary)
    lines = ["| model | beta | t→i R@1 | R@5 | R@10 | i→t R@1 | R@5 | R@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        for s in settings:
            t, i = results[m][s]["text_to_image"], results[m][s]["image_to_text"]
            lines.append(f"| {m} | {'off' if s == 'none' else s} | {t['R@1']:.1f} | {t['R@5']:.1f} | "
                         f"{t['R@10']:.1f} | {i['R@1']:.1f} | {i['R@5']:.1f} | {i['R@10']:.1f} |")
    lines.append("")
    lines.append("Mean over models and directions of mean(R@1, R@5, R@10): "
                 + ", ".join(f"{'off' if s == 'none' else 'beta ' + s} {score[s]:.2f}" for s in settings)
                 + f". Chosen beta: {chosen:g}.")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(json.dumps(summary["mean_R1_5_10"]), f"chosen {chosen:g}")
    print(text)


if __name__ == "__main__":
    main()
