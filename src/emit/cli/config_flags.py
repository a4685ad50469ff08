"""Flags generated from a config dataclass, and a record of which flags the user typed.

One flag per field of :class:`emit.config.PairingConfig` or
:class:`emit.retrieval.config.RetrievalConfig`: ``--field-name``, its type from the annotation,
its default from the field, its help and choices from the field's metadata
(:func:`emit.config.setting`). A ``bool`` field is an on/off pair (``--hflip-tta`` /
``--no-hflip-tta``). Choices named by a registry come from that registry's ``list_*()``, and
``{names}`` in a help text is filled from one, so help cannot drift from what the library knows.

Every generated flag notes in the namespace that it was given (:func:`given_flags`), even with
its default value, so a command can refuse a flag that does not apply instead of ignoring it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

from emit.cli.options import LazyHelp

_GIVEN = "_given_flags"  # namespace attribute: {dest: the option string typed}


def registry_names(registry: str) -> list[str]:
    """The names in one of the library's registries; imported only when asked (they need torch)."""
    if registry == "backbones":
        from emit.vision.backbones import list_backbones

        return list(list_backbones())
    if registry == "losses":
        from emit.retrieval.losses.registry import list_losses

        return list(list_losses())
    if registry == "presets":
        from emit.retrieval.presets import list_presets

        return list_presets()
    if registry == "text_encoders":
        from emit.retrieval.encoders.names import list_text_encoders

        return list(list_text_encoders())
    raise ValueError(f"unknown registry {registry!r}")


def _note(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    given = dict(getattr(namespace, _GIVEN, None) or {})  # a new dict: defaults are shared
    given[dest] = option_string or "--" + dest.replace("_", "-")
    setattr(namespace, _GIVEN, given)


class _Store(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        _note(namespace, self.dest, option_string)
        setattr(namespace, self.dest, values)


class _Switch(argparse.BooleanOptionalAction):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        _note(namespace, self.dest, option_string)
        super().__call__(parser, namespace, values, option_string)


def given_flags(args: argparse.Namespace) -> dict[str, str]:
    """``{field: option string}`` of the generated flags given on the command line."""
    return dict(getattr(args, _GIVEN, None) or {})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(hint: Any) -> tuple[type, list[Any] | None]:
    """The argparse type of an annotation, and its choices if it is a ``Literal``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        options = list(typing.get_args(hint))
        return type(options[0]), options
    if origin is Union or origin is types.UnionType:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return _kind(rest[0])
    if hint in (bool, int, float, str):
        return hint, None
    raise TypeError(f"no command-line flag for a field of type {hint!r}")


def field_choices(cls: type, name: str) -> list[Any] | None:
    """The choices of one config field: its metadata's, a registry's, or its ``Literal``'s."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    choices = f.metadata.get("choices")
    if isinstance(choices, str):
        return registry_names(choices)
    if choices is not None:
        return list(choices)
    return _kind(typing.get_type_hints(cls)[name])[1]


def field_help(f: dataclasses.Field) -> str:
    """The help of one config field, ready for argparse; ``{names}`` is filled from its registry
    only when help is shown (the backbones' names import torch and torchvision, ~4 s)."""
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"config field {f.name!r} has no help (give it one with emit.config.setting)")
    text = text.replace("%", "%%")
    if "{names}" in text:
        registry = f.metadata["names"]
        return LazyHelp(text, lambda: text.replace("{names}", ", ".join(registry_names(registry))))
    return text


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                     skip: Sequence[str] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind, _ = _kind(hints[f.name])
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=_Switch, default=default,
                                help=field_help(f))
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, action=_Store, type=kind, default=default,
                                choices=field_choices(cls, f.name), help=field_help(f))
