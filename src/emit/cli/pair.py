"""``emit pair train | predict | evaluate``: argument parsing only; the work is in
:mod:`emit.pairing.jobs`."""

from __future__ import annotations

import argparse

from emit.cli.config_flags import add_config_flags, field_choices
from emit.cli.options import add_cache_dir, add_command, add_device, add_engine_flags, print_json
from emit.config import PairingConfig, from_dict


def config_from(args: argparse.Namespace) -> PairingConfig:
    return from_dict(PairingConfig, vars(args)).validate()


def cmd_pair_train(args: argparse.Namespace) -> int:
    from emit.pairing.jobs import train_job

    print_json(train_job(args.data, args.out, config_from(args), image_root=args.image_root,
                         cache_dir=args.cache_dir, progress=not args.quiet, device=args.device,
                         extra=args.extra or ()))
    return 0


def cmd_pair_predict(args: argparse.Namespace) -> int:
    if args.engine == "ray":  # products spread over Ray actors; the same final_json.json
        from emit.scale.predict import predict_job_ray

        print_json(predict_job_ray(args.model, args.data, args.out, image_root=args.image_root,
                                   cache_dir=args.cache_dir, assign=args.assign, combine=args.combine,
                                   progress=not args.quiet, device=args.device, workers=args.workers,
                                   cpus_per_worker=args.cpus_per_worker,
                                   gpus_per_worker=args.gpus_per_worker, review_below=args.review_below))
        return 0
    from emit.pairing.jobs import predict_job

    print_json(predict_job(args.model, args.data, args.out, image_root=args.image_root,
                           cache_dir=args.cache_dir, assign=args.assign, combine=args.combine,
                           progress=not args.quiet, device=args.device, review_below=args.review_below))
    return 0


def cmd_pair_evaluate(args: argparse.Namespace) -> int:
    from emit.pairing.jobs import evaluate_job
    from emit.pairing.report import format_report

    report, json_path, png_path = evaluate_job(args.predictions, args.truth, baseline=args.baseline,
                                               confidence=args.confidence, out=args.out)
    print(format_report(report))
    print(f"report: {json_path}\nplot:   {png_path}")
    return 0


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-root", default=None,
                   help="where product folders with images live, for a combined *_all.json")
    add_cache_dir(p)
    add_device(p)


def _train(t: argparse.ArgumentParser) -> None:
    t.add_argument("data", help="folder of product folders, or a combined train_all.json")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--extra", action="append", default=None, metavar="PATH",
                   help="more labelled catalogue images to train on (repeatable): product folders, a "
                        "combined *_all.json, or JSON lines of {image, tag, group}; see docs/pairing.md")
    _data_flags(t)
    add_config_flags(t.add_argument_group("model settings (emit.config.PairingConfig)"), PairingConfig)
    t.set_defaults(func=cmd_pair_train)


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder from `emit pair train`")
    p.add_argument("data", help="folder of product folders, or a combined test_all.json")
    p.add_argument("--out", default="final_json.json", help="predictions file")
    _data_flags(p)
    p.add_argument("--assign", choices=field_choices(PairingConfig, "assign"), default=None,
                   help="assignment rule (default: the model's, normally exact)")
    p.add_argument("--combine", choices=field_choices(PairingConfig, "bag_combine"), default=None,
                   help="how bagged models combine (default: the model's)")
    p.add_argument("--review-below", type=float, default=None, metavar="P",
                   help="also write <out stem>.review.json: the products whose confidence is below P, "
                        "least confident first, for the review page")
    add_engine_flags(p)
    p.set_defaults(func=cmd_pair_predict)


def _evaluate(e: argparse.ArgumentParser) -> None:
    e.add_argument("predictions", help="final_json.json from `emit pair predict`")
    e.add_argument("truth", help="products with true tags (folder or combined file)")
    e.add_argument("--baseline", default=None,
                   help="baseline predictions (default: <predictions>.baseline.json if present)")
    e.add_argument("--confidence", default=None,
                   help="product confidences (default: <predictions>.confidence.json if present)")
    e.add_argument("--out", default=None, help="report prefix (default: <predictions>_report)")
    e.set_defaults(func=cmd_pair_evaluate)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``emit pair train | predict | evaluate``."""
    pair = sub.add_parser("pair", help="assign product images their option tags (EMIT)")
    pair_sub = pair.add_subparsers(dest="pair_command", required=True)
    add_command(pair_sub, "train", _train, parents=[common], help="learn labels and image model")
    add_command(pair_sub, "predict", _predict, parents=[common],
                help="fill imgs_tags for products; writes final_json.json")
    add_command(pair_sub, "evaluate", _evaluate, parents=[common], help="Acc and EM against true tags")
