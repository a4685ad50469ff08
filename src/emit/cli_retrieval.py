"""Retrieval commands of the ``emit`` command line; argument parsing only, the work is in
:mod:`emit.retrieval.jobs`.

``register(sub, common)`` adds::

    emit retrieval train --titles T --clicks Q --out RUN [config flags]
    emit retrieval evaluate RUN --captions C
    emit index build RUN IMAGES... --out IDX [--texts CAPTIONS]
    emit search IDX "text" --top 10
    emit search IDX --image photo.jpg --top 10 [--target texts]
"""

from __future__ import annotations

import argparse
from typing import Any

from emit.cli import print_json
from emit.config import from_dict
from emit.retrieval.config import (
    CLICK_WEIGHTS,
    LR_SCHEDULES,
    MINING_MODES,
    TASKS,
    TEXT_ENCODERS,
    RetrievalConfig,
)

_FORMATS = ["auto", "jsonl", "csv", "flickr8k", "coco", "pascal", "clicks"]

# name: (type, help, choices); booleans are on/off switches
_FLAGS: dict[str, tuple[Any, str, list[str] | None]] = {
    "backbone": (str, "frozen image backbone: efficientnet-lite0, efficientnet-lite2, densenet121, "
                      "colour-hist, timm:<name>, or parts joined with '+'", None),
    "weights": (str, "local checkpoint for the backbone", None),
    "encoder": (str, "text encoder: lstm (the paper), or frozen sentence model(s) + MLP: minilm, e5 "
                     "(multilingual) or minilm+e5", list(TEXT_ENCODERS)),
    "vectors": (str, "word vectors for lstm: a GloVe .txt, fastText .vec or .bin file "
                     "(if not given: the GloVe 6B-50d package)", None),
    "hidden": (int, "LSTM width", None),
    "num_layers": (int, "LSTM layers", None),
    "dropout": (float, "dropout between LSTM layers", None),
    "min_count": (int, "keep words without a vector seen this often", None),
    "max_tokens": (int, "tokens read per text", None),
    "loss": (str, "training loss", ["patr", "triplet", "l2", "vse", "infonce"]),
    "margin": (float, "loss margin in squared-distance units (if not given: the median squared distance "
                      "from an image to its n-negatives-th nearest image in a batch)", None),
    "n_negatives": (int, "in-batch hard negatives per anchor (patr, triplet)", None),
    "extra_stopwords": (str, "comma-separated words that never block a negative, e.g. 'men,women' for "
                        "catalogue texts (added to the English stopwords)", None),
    "mining": (str, "never take negatives from texts sharing any / all of the anchor's words, or "
                    "only exclude the same image (none)", list(MINING_MODES)),
    "temperature": (float, "InfoNCE temperature", None),
    "click_weight": (str, "weight of a clicked query: none, log(1 + clicks), clicks", list(CLICK_WEIGHTS)),
    "tasks": (str, "multitask (titles + clicks, the paper's eq. 4), titles or clicks", list(TASKS)),
    "batch_size": (int, "pairs per task and step", None),
    "lr": (float, "Adam learning rate", None),
    "lr_schedule": (str, "constant, or cosine: decay to 0 over the epochs, per step", list(LR_SCHEDULES)),
    "beta1": (float, "Adam beta1 (the paper: 0.99)", None),
    "beta2": (float, "Adam beta2", None),
    "grad_clip": (float, "clip the gradient norm (0 = off)", None),
    "epochs": (int, "training epochs (a killed run resumes, and may be given more epochs "
                        "before it has finished, except with --lr-schedule cosine)", None),
    "val_fraction": (float, "share of images held out for validation (0 = none)", None),
    "seed": (int, "random seed", None),
}
_SWITCHES = {
    "normalise_images": "L2-normalise the image features",
    "image_projection": "also learn a linear map of the image features (beyond the paper)",
}


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1. Checked here, so the error names the
    flag the user typed (``argument --top: ...``), not a parameter inside the library."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    defaults = RetrievalConfig()
    for name, (kind, help_text, choices) in _FLAGS.items():
        default = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default, choices=choices,
                       help=help_text)
    for name, help_text in _SWITCHES.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, action=argparse.BooleanOptionalAction,
                       default=getattr(defaults, name), help=help_text)


def config_from(args: argparse.Namespace) -> RetrievalConfig:
    return from_dict(RetrievalConfig, vars(args)).validate()


# ---- commands -----------------------------------------------------------------------------


def cmd_retrieval_train(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import train_job

    print_json(train_job(args.titles, args.clicks, args.out, config_from(args),
                         titles_format=args.titles_format, clicks_format=args.clicks_format,
                         image_root=args.image_root, val_titles=args.val_titles,
                         val_clicks=args.val_clicks, cache_dir=args.cache_dir, progress=not args.quiet))
    return 0


def cmd_retrieval_evaluate(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import evaluate_job

    print_json(evaluate_job(args.run, args.captions, fmt=args.format, image_root=args.image_root,
                            cache_dir=args.cache_dir, out=args.out, held_out=args.held_out,
                            hubness=args.hubness, beta=args.hubness_beta, progress=not args.quiet))
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import build_index_job

    print_json(build_index_job(args.run, args.images, args.out, kind=args.kind, texts=args.texts,
                               texts_format=args.texts_format, image_root=args.image_root,
                               cache_dir=args.cache_dir, hubness=args.hubness, beta=args.hubness_beta,
                               progress=not args.quiet))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import search_job

    result = search_job(args.index, args.text, image=args.image, top=args.top, target=args.target,
                        model=args.model, cache_dir=args.cache_dir)
    if args.json:
        print_json(result)
        return 0
    print(f"# {result['kind']} query -> {result['target']}; score: {result['order']}")
    for hit in result["results"]:
        print(f"{hit['score']:.6g}\t{hit['id']}")
    return 0


# ---- parsers ------------------------------------------------------------------------------


def _add_hubness_flags(p: argparse.ArgumentParser) -> None:
    from emit.retrieval.hubness import DEFAULT_BETA, DEFAULT_DIRECTION, DIRECTIONS

    p.add_argument("--hubness", default=DEFAULT_DIRECTION, choices=list(DIRECTIONS),
                   help="correct hubs in this search direction: subtract from each candidate its "
                        "log-sum-exp score against the run's bank of training queries; auto = both "
                        "for cosine (infonce) models, none for squared-distance ones")
    p.add_argument("--hubness-beta", type=float, default=DEFAULT_BETA,
                   help="inverse temperature of the hubness correction, in score units (positive; "
                        "unused with --hubness none)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``retrieval``, ``index`` and ``search`` commands to the ``emit`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    data_flags = argparse.ArgumentParser(add_help=False)
    data_flags.add_argument("--image-root", default=None,
                            help="resolve relative image paths against this folder "
                                 "(if not given: the data file's folder)")
    data_flags.add_argument("--cache-dir", default=None,
                            help="feature cache (if not given: $EMIT_CACHE_DIR or ~/.cache/emit/features)")

    retrieval = sub.add_parser("retrieval", help="text-to-image retrieval: train and evaluate a text encoder")
    r_sub = retrieval.add_subparsers(dest="retrieval_command", required=True)
    t = r_sub.add_parser("train", parents=[common, data_flags], formatter_class=fmt,
                         help="map titles and queries into a frozen CNN's feature space (resumable)")
    t.add_argument("--titles", default=None,
                   help="titles/captions: JSON lines, CSV, Flickr8k, COCO or Pascal")
    t.add_argument("--clicks", default=None, help="click log: query, image[, count] as JSON lines or CSV")
    t.add_argument("--out", required=True, help="run folder (model, checkpoint, curves)")
    t.add_argument("--val-titles", default=None,
                   help="validation titles (if not given: hold out --val-fraction of the images)")
    t.add_argument("--val-clicks", default=None,
                   help="validation clicks (if not given: hold out --val-fraction of the images)")
    t.add_argument("--titles-format", default="auto", choices=_FORMATS, help="format of the titles file")
    t.add_argument("--clicks-format", default="clicks", choices=_FORMATS, help="format of the clicks file")
    _add_config_flags(t)
    t.set_defaults(func=cmd_retrieval_train)

    e = r_sub.add_parser("evaluate", parents=[common, data_flags], formatter_class=fmt,
                         help="R@K, median rank, mAP@R and mAP in both directions; JSON + PNG")
    e.add_argument("run", help="run folder from `emit retrieval train`")
    e.add_argument("--captions", required=True, help="captions to evaluate on")
    e.add_argument("--format", default="auto", choices=_FORMATS, help="format of the captions file")
    e.add_argument("--out", default=None, help="report prefix (if not given: RUN/eval_<captions name>)")
    e.add_argument("--held-out", action="store_true",
                   help="keep only the images the run held out for validation (--val-fraction), so a "
                        "run can be evaluated on the training files without scoring training images")
    _add_hubness_flags(e)
    e.set_defaults(func=cmd_retrieval_evaluate)

    index = sub.add_parser("index", help="nearest-neighbour indexes of images")
    i_sub = index.add_subparsers(dest="index_command", required=True)
    b = i_sub.add_parser("build", parents=[common, data_flags], formatter_class=fmt,
                         help="embed images with a model's backbone into a FAISS index")
    b.add_argument("run", help="run folder from `emit retrieval train`")
    b.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", default="exact", choices=["exact", "ivf", "hnsw"],
                   help="exact brute force, or approximate for large collections")
    b.add_argument("--texts", default=None, help="also index the texts of this caption file (image -> text)")
    b.add_argument("--texts-format", default="auto", choices=_FORMATS, help="format of the --texts file")
    _add_hubness_flags(b)
    b.set_defaults(func=cmd_index_build)

    s = sub.add_parser("search", parents=[common], formatter_class=fmt,
                       help="search an index with a text, or with an image (--image)")
    s.add_argument("index", help="index folder from `emit index build`")
    s.add_argument("text", nargs="?", default=None, help="text query (omit with --image)")
    s.add_argument("--image", default=None, help="image query file")
    s.add_argument("--top", type=positive_int, default=10, help="number of results (at least 1)")
    s.add_argument("--target", default="images", choices=["images", "texts"],
                   help="search images, or the texts indexed with --texts")
    s.add_argument("--model", default=None, help="run folder (if not given: the one that built the index)")
    s.add_argument("--cache-dir", default=None, help="feature cache for --image queries")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_search)
