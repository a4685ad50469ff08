"""``emit retrieval train | evaluate``, ``emit index build`` and ``emit search``: argument
parsing only; the work is in :mod:`emit.retrieval.jobs`::

    emit retrieval train --titles T --clicks Q --out RUN [config flags]
    emit retrieval evaluate RUN --captions C
    emit index build RUN IMAGES... --out IDX [--texts CAPTIONS]
    emit index build RUN --from-features FEATS --kind ivfpq --out IDX [--workers 4]
    emit search IDX "text" --top 10
    emit search IDX --image photo.jpg --top 10 [--target texts]

A flag of ``retrieval train`` that the chosen text encoder does not use (``--hidden`` with
``--encoder minilm``) is refused, even with its default value: see :func:`refuse_unused_flags`.
"""

from __future__ import annotations

import argparse
import os

from emit.cli.config_flags import add_config_flags, flag_name, given_flags
from emit.cli.options import add_cache_dir, add_command, add_device, positive_int, print_json
from emit.config import from_dict
from emit.data.captions import FORMATS
from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig, with_preset

CAPTION_FORMATS = ("auto", *FORMATS)


def refuse_unused_flags(args: argparse.Namespace) -> None:
    """Raise :class:`EmitError` naming a flag given for a setting that some text encoder uses
    but the chosen one does not (``RetrievalConfig.validate`` refuses non-default values of
    such settings from library users; here a flag given with its default is refused too)."""
    given = given_flags(args)
    if not given:
        return
    from emit.retrieval.encoders.names import encoder_settings, list_text_encoders
    from emit.retrieval.presets import preset_settings

    # the encoder the run will have: the one typed, else the preset's (paper: lstm), else the default
    encoder = (args.encoder if "encoder" in given
               else preset_settings(args.preset).get("encoder", args.encoder))
    used = encoder_settings(encoder)
    for name, flag in given.items():
        if name in used:
            continue
        users = [e for e in list_text_encoders() if name in encoder_settings(e)]
        if users:
            which = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"
            raise EmitError(f"{flag} only applies to --encoder {which}, not to --encoder {encoder}; "
                            f"drop {flag}")


def config_from(args: argparse.Namespace) -> RetrievalConfig:
    refuse_unused_flags(args)
    # the preset's settings, except where a flag was typed: explicit flags win
    return with_preset(from_dict(RetrievalConfig, vars(args)), set(given_flags(args))).validate()


# ---- commands -----------------------------------------------------------------------------


def cmd_retrieval_train(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import train_job

    summary = train_job(args.titles, args.clicks, args.out, config_from(args),
                        titles_format=args.titles_format, clicks_format=args.clicks_format,
                        image_root=args.image_root, val_titles=args.val_titles,
                        val_clicks=args.val_clicks, cache_dir=args.cache_dir, progress=not args.quiet,
                        device=args.device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary: rank 0's
        print_json(summary)
    return 0


def cmd_retrieval_evaluate(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import evaluate_job

    print_json(evaluate_job(args.run, args.captions, fmt=args.format, image_root=args.image_root,
                            cache_dir=args.cache_dir, out=args.out, held_out=args.held_out,
                            hubness=args.hubness, beta=args.hubness_beta, progress=not args.quiet,
                            device=args.device))
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import build_index_job

    if args.from_features is not None:
        return _index_build_from_features(args)
    if not args.images:
        raise EmitError("give the images to index (files or folders), or --from-features DIR")
    for flag in ("nlist", "nprobe", "pq_m", "train_size", "workers"):
        if getattr(args, flag) is not None:
            raise EmitError(f"--{flag.replace('_', '-')} applies to --from-features builds only")
    if args.kind not in (None, "exact", "ivf", "hnsw"):
        raise EmitError(f"--kind {args.kind} needs --from-features DIR; for image folders use exact, ivf "
                        "or hnsw")
    print_json(build_index_job(args.run, args.images, args.out, kind=args.kind or "exact", texts=args.texts,
                               texts_format=args.texts_format, image_root=args.image_root,
                               cache_dir=args.cache_dir, hubness=args.hubness, beta=args.hubness_beta,
                               progress=not args.quiet, device=args.device))
    return 0


def _index_build_from_features(args: argparse.Namespace) -> int:
    import os

    from emit.retrieval.jobs import build_index_from_features_job
    from emit.retrieval.ondisk import BuildSettings

    if args.images:
        raise EmitError(f"give either images or --from-features {args.from_features}, not both")
    from emit.devices import resolve_device

    resolve_device(args.device)  # the run's image side maps the shards here on the CPU; refuse an absent one
    settings = BuildSettings(kind=args.kind or "ivfpq", nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m,
                             train_size=args.train_size,
                             workers=args.workers or max(1, min(4, os.cpu_count() or 1)))
    print_json(build_index_from_features_job(args.run, args.from_features, args.out, settings=settings,
                                             texts=args.texts, texts_format=args.texts_format,
                                             image_root=args.image_root, hubness=args.hubness,
                                             beta=args.hubness_beta))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from emit.retrieval.jobs import search_job

    result = search_job(args.index, args.text, image=args.image, top=args.top, target=args.target,
                        model=args.model, cache_dir=args.cache_dir, device=args.device)
    if args.json:
        print_json(result)
        return 0
    print(f"# {result['kind']} query -> {result['target']}; score: {result['order']}")
    for hit in result["results"]:
        print(f"{hit['score']:.6g}\t{hit['id']}")
    return 0


# ---- parsers ------------------------------------------------------------------------------


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-root", default=None,
                   help="resolve relative image paths against this folder "
                        "(if not given: the data file's folder)")
    add_cache_dir(p)
    add_device(p)


def _hubness_flags(p: argparse.ArgumentParser) -> None:
    from emit.retrieval.hubness import DEFAULT_BETA, DEFAULT_DIRECTION, DIRECTIONS

    p.add_argument("--hubness", default=DEFAULT_DIRECTION, choices=list(DIRECTIONS),
                   help="correct hubs in this search direction: subtract from each candidate its "
                        "log-sum-exp score against the run's bank of training queries; auto = both "
                        "for cosine (infonce) models, none for squared-distance ones")
    p.add_argument("--hubness-beta", type=float, default=DEFAULT_BETA,
                   help="inverse temperature of the hubness correction, in score units (positive; "
                        "unused with --hubness none)")


def _train(t: argparse.ArgumentParser) -> None:
    _data_flags(t)
    t.add_argument("--titles", default=None,
                   help="titles/captions: JSON lines, CSV, Flickr8k, COCO or Pascal")
    t.add_argument("--clicks", default=None, help="click log: query, image[, count] as JSON lines or CSV")
    t.add_argument("--out", required=True, help="run folder (model, checkpoint, curves)")
    held_out = f"(if not given: hold out {flag_name('val_fraction')} of the images)"
    t.add_argument("--val-titles", default=None, help=f"validation titles {held_out}")
    t.add_argument("--val-clicks", default=None, help=f"validation clicks {held_out}")
    t.add_argument("--titles-format", default="auto", choices=CAPTION_FORMATS,
                   help="format of the titles file")
    t.add_argument("--clicks-format", default="clicks", choices=CAPTION_FORMATS,
                   help="format of the clicks file")
    add_config_flags(t.add_argument_group("model settings (emit.retrieval.config.RetrievalConfig)"),
                     RetrievalConfig)
    t.set_defaults(func=cmd_retrieval_train)


def _evaluate(e: argparse.ArgumentParser) -> None:
    _data_flags(e)
    e.add_argument("run", help="run folder from `emit retrieval train`")
    e.add_argument("--captions", required=True, help="captions to evaluate on")
    e.add_argument("--format", default="auto", choices=CAPTION_FORMATS, help="format of the captions file")
    e.add_argument("--out", default=None, help="report prefix (if not given: RUN/eval_<captions name>)")
    e.add_argument("--held-out", action="store_true",
                   help="keep only the images the run held out for validation (--val-fraction), so a "
                        "run can be evaluated on the training files without scoring training images")
    _hubness_flags(e)
    e.set_defaults(func=cmd_retrieval_evaluate)


def _index_build(b: argparse.ArgumentParser) -> None:
    _data_flags(b)
    b.add_argument("run", help="run folder from `emit retrieval train`")
    b.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--from-features", default=None, metavar="DIR",
                   help="instead of images: the Parquet shards of `emit features extract --out DIR`; "
                        "the index is trained on a sample, filled by parallel processes, merged on disk "
                        "and opened memory-mapped, so it may exceed RAM (ivfpq, ivfflat)")
    b.add_argument("--kind", default=None, choices=["exact", "ivf", "hnsw", "ivfflat", "ivfpq"],
                   help="exact brute force, or approximate for large collections (default: exact; "
                        "ivfpq with --from-features); ivfflat and ivfpq need --from-features")
    large = b.add_argument_group("--from-features builds")
    large.add_argument("--nlist", type=positive_int, default=None,
                       help="IVF lists (default: about 4 sqrt(N))")
    large.add_argument("--nprobe", type=positive_int, default=None,
                       help="IVF lists visited per query (default: max(8, nlist / 8))")
    large.add_argument("--pq-m", type=positive_int, default=None,
                       help="PQ bytes per vector (default: one per 4 dimensions, at most 64)")
    large.add_argument("--train-size", type=positive_int, default=None,
                       help="rows sampled to train the quantiser (default: max(40 nlist, 10000))")
    large.add_argument("--workers", type=positive_int, default=None,
                       help="processes adding shards in parallel (default: the cores, at most 4)")
    b.add_argument("--texts", default=None, help="also index the texts of this caption file (image -> text)")
    b.add_argument("--texts-format", default="auto", choices=CAPTION_FORMATS,
                   help="format of the --texts file")
    _hubness_flags(b)
    b.set_defaults(func=cmd_index_build)


def _search(s: argparse.ArgumentParser) -> None:
    s.add_argument("index", help="index folder from `emit index build`")
    s.add_argument("text", nargs="?", default=None, help="text query (omit with --image)")
    s.add_argument("--image", default=None, help="image query file")
    s.add_argument("--top", type=positive_int, default=10, help="number of results (at least 1)")
    s.add_argument("--target", default="images", choices=["images", "texts"],
                   help="search images, or the texts indexed with --texts")
    s.add_argument("--model", default=None, help="run folder (if not given: the one that built the index)")
    add_cache_dir(s, "feature cache for --image queries")
    add_device(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_search)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``retrieval``, ``index`` and ``search`` commands to the ``emit`` parser."""
    retrieval = sub.add_parser("retrieval", help="text-to-image retrieval: train and evaluate a text encoder")
    r_sub = retrieval.add_subparsers(dest="retrieval_command", required=True)
    add_command(r_sub, "train", _train, parents=[common],
                help="map titles and queries into a frozen CNN's feature space (resumable)")
    add_command(r_sub, "evaluate", _evaluate, parents=[common],
                help="R@K, median rank, mAP@R and mAP in both directions; JSON + PNG")
    index = sub.add_parser("index", help="nearest-neighbour indexes of images")
    i_sub = index.add_subparsers(dest="index_command", required=True)
    add_command(i_sub, "build", _index_build, parents=[common],
                help="embed images with a model's backbone into a FAISS index")
    add_command(sub, "search", _search, parents=[common],
                help="search an index with a text, or with an image (--image)")
