"""``emit split``, ``emit labels stats`` and ``emit demo``: argument parsing only; the work is in
:mod:`emit.jobs`."""

from __future__ import annotations

import argparse

from emit.cli.options import add_command, print_json
from emit.config import PairingConfig


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


def _split(s: argparse.ArgumentParser) -> None:
    s.add_argument("data", help="folder of product folders, or a combined *_all.json")
    s.add_argument("--out", default="split.json", help="where to write the lists of product ids")
    s.add_argument("--val-fraction", type=float, default=0.2, help="share of products in val")
    s.add_argument("--seed", type=int, default=0, help="seed of the hash that assigns products")
    s.add_argument("--materialise", choices=["none", "symlink", "copy", "move"], default="none",
                   help="also build train/ and val/ folders; only 'move' moves your files")
    s.add_argument("--into", default=None, help="folder for train/ and val/ (with --materialise)")
    s.set_defaults(func=cmd_split)


def _labels_stats(ls: argparse.ArgumentParser) -> None:
    defaults = PairingConfig()  # the vocabulary `emit pair train` would build
    ls.add_argument("tags", help="products (folder or *_all.json) or a text file with one tag per line")
    ls.add_argument("--min-count", type=int, default=defaults.min_count, help="drop rarer labels")
    ls.add_argument("--top-k", type=int, default=defaults.top_k, help="keep at most this many labels")
    ls.add_argument("--vocab", default=None, help="use this vocab.json (e.g. a model's) instead")
    ls.add_argument("--top", type=int, default=20, help="labels to list")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_labels_stats)


def _demo(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", default="demo-out", help="folder for the data, model and report")
    d.add_argument("--products", type=int, default=120, help="number of generated products")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.set_defaults(func=cmd_demo)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``emit split``, ``emit labels stats`` and ``emit demo``."""
    add_command(sub, "split", _split, parents=[common], help="deterministic product-level train/val split")
    labels = sub.add_parser("labels", help="label vocabulary tools")
    labels_sub = labels.add_subparsers(dest="labels_command", required=True)
    add_command(labels_sub, "stats", _labels_stats, parents=[common],
                help="vocabulary and coverage of a tag corpus")
    add_command(sub, "demo", _demo, parents=[common], help="generate products, train, predict, evaluate")
