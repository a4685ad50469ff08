"""The ``emit`` command line: argument parsing only; the work is in the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from emit import __version__
from emit.config import PairingConfig, from_dict
from emit.problems import EmitError

log = logging.getLogger("emit")


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(message)s", stream=sys.stderr)
    # FAISS reports at INFO which CPU build it tried to load: noise on every search
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    import torch

    # Two cores here: one torch thread per core, and never more than the machine has.
    torch.set_num_threads(max(1, min(args.threads or (os.cpu_count() or 1), os.cpu_count() or 1)))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1))


# ---- pair ---------------------------------------------------------------------------------

_TRAIN_FLAGS: dict[str, str] = {
    "backbone": "image backbone: efficientnet-lite0, efficientnet-lite2, densenet121, densenet161, "
                "colour-hist, timm:<name>, or parts joined with '+'",
    "weights": "local checkpoint for the backbone (no download needed)",
    "min_count": "drop labels seen fewer times in the training tags",
    "top_k": "keep at most this many labels",
    "loss": "bce or softmax (the paper's soft-target cross-entropy)",
    "hidden": "hidden width of the head (0 = linear)",
    "dropout": "dropout in the head",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "batch_size": "batch size",
    "max_epochs": "maximum epochs per head",
    "patience": "stop after this many epochs without a better validation loss",
    "val_fraction": "share of training products held back for early stopping",
    "listwise_weight": "weight of the loss that ranks a product's own tags (0 = paper only)",
    "bag_size": "number of bagged models",
    "bag_label_fraction": "share of labels each bagged model sees",
    "bag_data_fraction": "share of training products each bagged model sees",
    "bag_combine": "mean (average costs, then assign) or vote (the paper's rule)",
    "assign": "exact (cover-constrained, default) or argmin (the paper's per-image rule)",
    "finetune_epochs": "epochs of full fine-tuning with --tune-full-model",
    "finetune_lr": "learning rate of the backbone when fine-tuning",
    "seed": "random seed",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    defaults = PairingConfig()
    types = {f.name: f.type for f in fields(PairingConfig)}
    for name, help_text in _TRAIN_FLAGS.items():
        default = getattr(defaults, name)
        kind = {"int": int, "float": float}.get(str(types[name]), str)
        choices = {"loss": ["bce", "softmax"], "bag_combine": ["mean", "vote"],
                   "assign": ["exact", "argmin"]}.get(name)
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default,
                       choices=choices, help=f"{help_text} (default: {default})")
    p.add_argument("--tune-full-model", action="store_true",
                   help="fine-tune the whole backbone as the paper does (slow on a CPU)")
    p.add_argument("--hflip-tta", dest="hflip_tta", action="store_true",
                   help="average features with the mirrored image (helps CNN backbones)")
    p.add_argument("--no-product-context", dest="product_context", action="store_false",
                   help="do not give the head each image's difference from its product's mean")


def _config_from(args: argparse.Namespace) -> PairingConfig:
    return from_dict(PairingConfig, vars(args)).validate()


def cmd_pair_train(args: argparse.Namespace) -> int:
    from emit.pairing.jobs import train_job

    print_json(train_job(args.data, args.out, _config_from(args), image_root=args.image_root,
                     cache_dir=args.cache_dir, progress=not args.quiet))
    return 0


def cmd_pair_predict(args: argparse.Namespace) -> int:
    from emit.pairing.jobs import predict_job

    print_json(predict_job(args.model, args.data, args.out, image_root=args.image_root,
                       cache_dir=args.cache_dir, assign=args.assign, combine=args.combine,
                       progress=not args.quiet))
    return 0


def cmd_pair_evaluate(args: argparse.Namespace) -> int:
    from emit.pairing.jobs import evaluate_job
    from emit.pairing.report import format_report

    report, json_path, png_path = evaluate_job(args.predictions, args.truth, baseline=args.baseline,
                                               out=args.out)
    print(format_report(report))
    print(f"report: {json_path}\nplot:   {png_path}")
    return 0


# ---- split, labels, demo ------------------------------------------------------------------


def cmd_split(args: argparse.Namespace) -> int:
    from emit.jobs import split_job

    print_json(split_job(args.data, args.out, val_fraction=args.val_fraction, seed=args.seed,
                     materialise=args.materialise, into=args.into))
    return 0


def cmd_labels_stats(args: argparse.Namespace) -> int:
    from emit.jobs import labels_stats_job

    stats = labels_stats_job(args.tags, min_count=args.min_count, top_k=args.top_k,
                             vocab=args.vocab, top=args.top)
    if args.json:
        print_json(stats)
    else:
        cov = stats["coverage"]
        print(f"{cov['distinct_tags']} distinct tags, {cov['tag_occurrences']} occurrences "
              f"in {stats['products']} products")
        print(f"labels in vocabulary: {len(stats['labels'])} (min_count={args.min_count}, "
              f"top_k={args.top_k}{', from ' + str(args.vocab) if args.vocab else ''})")
        print(f"tags with at least one label: {cov['distinct_covered']}/{cov['distinct_tags']} "
              f"= {cov['distinct_coverage']:.1%} of distinct tags, "
              f"{cov['occurrence_coverage']:.1%} of occurrences")
        print("top labels: " + ", ".join(f"{lab} {c}" for lab, c in stats["labels"][: args.top]))
        if cov["uncovered_examples"]:
            print("examples without a label: " + ", ".join(cov["uncovered_examples"][:10]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from emit.jobs import demo_job

    print_json(demo_job(args.out, n_products=args.products, seed=args.seed, progress=not args.quiet))
    return 0


# ---- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emit", description="Match images and texts through embeddings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"emit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the number of cores)")
    sub = parser.add_subparsers(dest="command", required=True)

    pair = sub.add_parser("pair", help="assign product images their option tags (EMIT)")
    pair_sub = pair.add_subparsers(dest="pair_command", required=True)
    data_flags = argparse.ArgumentParser(add_help=False)
    data_flags.add_argument("--image-root", default=None,
                            help="where product folders with images live, for a combined *_all.json")
    data_flags.add_argument("--cache-dir", default=None,
                            help="feature cache (default: $EMIT_CACHE_DIR or ~/.cache/emit/features)")

    t = pair_sub.add_parser("train", parents=[common, data_flags], help="learn labels and image model",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("data", help="folder of product folders, or a combined train_all.json")
    t.add_argument("--out", required=True, help="model folder to write")
    _add_config_flags(t)
    t.set_defaults(func=cmd_pair_train)

    p = pair_sub.add_parser("predict", parents=[common, data_flags],
                            help="fill imgs_tags for products; writes final_json.json",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model folder from `emit pair train`")
    p.add_argument("data", help="folder of product folders, or a combined test_all.json")
    p.add_argument("--out", default="final_json.json", help="predictions file")
    p.add_argument("--assign", choices=["exact", "argmin"], default=None,
                   help="assignment rule (default: the model's, normally exact)")
    p.add_argument("--combine", choices=["mean", "vote"], default=None,
                   help="how bagged models combine (default: the model's)")
    p.set_defaults(func=cmd_pair_predict)

    e = pair_sub.add_parser("evaluate", parents=[common], help="Acc and EM against true tags")
    e.add_argument("predictions", help="final_json.json from `emit pair predict`")
    e.add_argument("truth", help="products with true tags (folder or combined file)")
    e.add_argument("--baseline", default=None,
                   help="baseline predictions (default: <predictions>.baseline.json if present)")
    e.add_argument("--out", default=None, help="report prefix (default: <predictions>_report)")
    e.set_defaults(func=cmd_pair_evaluate)

    s = sub.add_parser("split", parents=[common], help="deterministic product-level train/val split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("data", help="folder of product folders, or a combined *_all.json")
    s.add_argument("--out", default="split.json", help="where to write the lists of product ids")
    s.add_argument("--val-fraction", type=float, default=0.2, help="share of products in val")
    s.add_argument("--seed", type=int, default=0, help="seed of the hash that assigns products")
    s.add_argument("--materialise", choices=["none", "symlink", "copy", "move"], default="none",
                   help="also build train/ and val/ folders; only 'move' moves your files")
    s.add_argument("--into", default=None, help="folder for train/ and val/ (with --materialise)")
    s.set_defaults(func=cmd_split)

    labels = sub.add_parser("labels", help="label vocabulary tools")
    labels_sub = labels.add_subparsers(dest="labels_command", required=True)
    ls = labels_sub.add_parser("stats", parents=[common], help="vocabulary and coverage of a tag corpus",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ls.add_argument("tags", help="products (folder or *_all.json) or a text file with one tag per line")
    ls.add_argument("--min-count", type=int, default=5, help="drop rarer labels")
    ls.add_argument("--top-k", type=int, default=64, help="keep at most this many labels")
    ls.add_argument("--vocab", default=None, help="use this vocab.json (e.g. a model's) instead")
    ls.add_argument("--top", type=int, default=20, help="labels to list")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_labels_stats)

    d = sub.add_parser("demo", parents=[common], help="generate products, train, predict, evaluate",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--out", default="demo-out", help="folder for the data, model and report")
    d.add_argument("--products", type=int, default=120, help="number of generated products")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.set_defaults(func=cmd_demo)

    from emit.cli_retrieval import register as register_retrieval

    register_retrieval(sub, common)  # retrieval train/evaluate, index build, search
    from emit.cli_serve import register as register_serve

    register_serve(sub, common)  # the HTTP service and web pages
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup(args)
    try:
        return int(args.func(args))
    except EmitError as exc:
        log.error("%s", exc)
        return 2
    except BrokenPipeError:
        # The reader went away (`emit search ... | head`): not worth a traceback. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; outputs written so far are complete (writes are atomic) and "
                  "cached features are kept, so rerunning resumes")
        return 130


if __name__ == "__main__":
    sys.exit(main())

