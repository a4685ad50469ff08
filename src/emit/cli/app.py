"""The ``emit`` parser and entry point: the common options, one command group per module
(:mod:`~emit.cli.pair`, :mod:`~emit.cli.data`, :mod:`~emit.cli.retrieval`,
:mod:`~emit.cli.serve`), logging and threads, and errors turned into exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from emit import __version__
from emit.cli.data import register as register_data
from emit.cli.features import register as register_features
from emit.cli.options import Parser, common_options
from emit.cli.pair import register as register_pair
from emit.cli.retrieval import register as register_retrieval
from emit.cli.serve import register as register_serve
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


def build_parser() -> argparse.ArgumentParser:
    """The whole ``emit`` parser; each command adds its own options when it is used."""
    parser = Parser(prog="emit", description="Match images and texts through embeddings.")
    parser.add_argument("--version", action="version", version=f"emit {__version__}")
    common = common_options()
    sub = parser.add_subparsers(dest="command", required=True)
    register_pair(sub, common)  # pair train / predict / evaluate
    register_data(sub, common)  # split, labels stats, demo
    register_retrieval(sub, common)  # retrieval train / evaluate, index build, search
    register_serve(sub, common)  # the HTTP service and web pages
    register_features(sub, common)  # features extract: Parquet shards, local or on Ray
    return parser


def commands(parser: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of ``parser`` (default: :func:`build_parser`) as ``(words, parser)``, group
    commands included, each with all its options added (for tests and documentation)."""
    parser = build_parser() if parser is None else parser
    if isinstance(parser, Parser):
        parser.ready()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*path, name))


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
