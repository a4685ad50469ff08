"""What every ``emit`` command shares: the common options, the feature-cache option, the help
formatter, JSON printing, and commands whose options are added only when they are used."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

# emit.vision.features.default_cache_dir, spelled out for help texts (which must not import torch)
CACHE_DIR_DEFAULT = "~/.cache/emit/features"

# a help text that says itself what happens without the option
_STATES_DEFAULT = re.compile(r"%\(default\)|\(default\b|\bdefault:|if not given")


class LazyHelp(str):
    """A help text completed only when help is shown: ``render()`` gives the text argparse
    formats (for help listing a registry that takes long to import)."""

    def __new__(cls, template: str, render: Callable[[], str]) -> LazyHelp:
        self = super().__new__(cls, template)
        self.render = render  # type: ignore[attr-defined]
        return self


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default once: appends ``(default: X)`` unless the help already says
    what happens without the option; not for plain switches, nor for None or empty defaults.
    Completes :class:`LazyHelp` texts."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help.render() if isinstance(action.help, LazyHelp) else action.help or ""
        default = action.default
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        optional = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if (_STATES_DEFAULT.search(text) or default is None or default is argparse.SUPPRESS
                or default == "" or switch or not optional):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options may be added on first use (:func:`add_command`), so
    ``emit --help`` does not import the registries (and torch) that only one command needs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._pending: Callable[[argparse.ArgumentParser], None] | None = None

    def defer(self, build: Callable[[argparse.ArgumentParser], None]) -> None:
        self._pending = build

    def ready(self) -> Parser:
        """Add the deferred options now (parsing and help do this themselves)."""
        if self._pending is not None:
            build, self._pending = self._pending, None
            build(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.ready()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.ready()
        return super().format_usage()

    def format_help(self) -> str:
        self.ready()
        return super().format_help()


def add_command(sub: argparse._SubParsersAction, name: str, build: Callable[[argparse.ArgumentParser], None],
                **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser(name, **kwargs)``, with ``build(parser)`` adding its options: when the
    command is used if ``sub`` makes :class:`Parser` s, else now."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    parser = sub.add_parser(name, **kwargs)
    if isinstance(parser, Parser):
        parser.defer(build)
    else:
        build(parser)
    return parser


def common_options() -> argparse.ArgumentParser:
    """The options of every command (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--threads", type=int, default=None,
                        help="torch and FAISS threads (default: the number of cores; emit serve: 1)")
    return common


def add_cache_dir(parser: argparse.ArgumentParser, what: str = "feature cache") -> None:
    parser.add_argument("--cache-dir", default=None,
                        help=f"{what} (default: $EMIT_CACHE_DIR, else {CACHE_DIR_DEFAULT})")


# emit.devices.DEVICE_HELP, spelled out here too: help texts must not import torch
DEVICE_HELP = ("where models run: auto (CUDA if present, then MPS, else CPU), cpu, cuda, cuda:N "
               "or mps")


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device``, for every command that runs a model (resolved by
    :func:`emit.devices.resolve_device`, which refuses a device that is not there)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


ENGINES = ("local", "ray")  # emit.scale.jobs.ENGINES, spelled out: parsing must not import torch


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """``--engine local|ray`` and the Ray actor pool's size and resources (for every command
    that can run on Ray)."""
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this process; ray: Ray Data actors on the cluster at RAY_ADDRESS, or "
                        "on a one-machine cluster started for the job")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="ray: actors, each loading the model once")
    p.add_argument("--cpus-per-worker", type=non_negative_float, default=1.0,
                   help="ray: CPUs per actor (also its torch and decoding threads)")
    p.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0,
                   help="ray: GPUs per actor (0: run on CPUs)")


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


def print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1))
