"""``emit features extract``: argument parsing only; the job is :mod:`emit.scale.jobs`::

    emit features extract --out feats/ IMAGES_OR_MANIFEST... [--backbone B] [--device D]
    emit features extract --engine ray --workers 8 --gpus-per-worker 1 --out feats/ manifest.parquet

Writes ``feats/part-NNNNN.parquet`` (columns ``path``, ``sha256``, ``features``, ``error``) and
``feats/_SUCCESS.json`` with the summary, which is also printed.
"""

from __future__ import annotations

import argparse

from emit.cli.config_flags import registry_names
from emit.cli.options import LazyHelp, add_command, add_device, add_engine_flags, positive_int, print_json
from emit.config import BACKBONE_HELP


def cmd_features_extract(args: argparse.Namespace) -> int:
    from emit.scale.jobs import ExtractJob, extract_to_shards

    job = ExtractJob(inputs=args.inputs, out=args.out, backbone=args.backbone, weights=args.weights,
                     engine=args.engine, device=args.device, cache_dir=args.cache_dir,
                     batch_size=args.batch_size, shard_size=args.shard_size, workers=args.workers,
                     cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                     threads=args.threads, progress=not args.quiet)
    print_json(extract_to_shards(job))
    return 0


def _extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (read recursively) or manifests: .txt with one path a "
                        "line, .csv or .parquet with a 'path' column (relative paths: to the manifest)")
    p.add_argument("--out", required=True, help="folder for the Parquet shards (part-NNNNN.parquet)")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help=LazyHelp("image backbone: " + BACKBONE_HELP,
                                 lambda: "image backbone: " + BACKBONE_HELP.replace(
                                     "{names}", ", ".join(registry_names("backbones")))))
    p.add_argument("--weights", default=None, help="local checkpoint for the backbone (no download needed)")
    add_device(p)
    p.add_argument("--cache-dir", default=None,
                   help="feature cache to reuse and fill, shared with `emit pair train` etc. (if not "
                        "given: no cache)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per forward pass (default: 32; with --engine local on a GPU, what fits "
                        "its free memory)")
    p.add_argument("--shard-size", type=positive_int, default=1000,
                   help="images per output shard; keep it the same when resuming a job")
    add_engine_flags(p)
    p.set_defaults(func=cmd_features_extract)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``emit features extract``."""
    features = sub.add_parser("features", help="image features as Parquet shards, locally or on Ray")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    add_command(features_sub, "extract", _extract, parents=[common],
                help="extract image features into Parquet shards (resumable; --engine ray for a cluster)",
                description="Extract image features into Parquet shards under --out, one shard per "
                            "--shard-size images of the sorted inputs. Shards already written are "
                            "skipped, so a killed job resumes where it stopped. Bad images become rows "
                            "with 'error' set.")
