"""Split titles, queries and captions into lowercase tokens.

English (and any text in a Latin or other alphabetic script) is split into runs of letters and
digits: punctuation and white space separate tokens and are dropped, so ``"Men's T-Shirt"``
becomes ``["men", "s", "t", "shirt"]``. Text with CJK characters is segmented with Jieba (the
same cached loader as :mod:`emit.text.labels`), and the non-CJK pieces Jieba returns are split
as above, so mixed text such as ``"黑色T恤 2件"`` works. The text is NFKC-normalised first, so
full-width letters and digits (``ＡＢＣ１２``) become ordinary ones.

:func:`content_words` keeps the words that carry content: without :data:`STOPWORDS_EN`, the
one English stop-word list (the LSTM vocabulary with ``drop_stopwords`` and the negative miner
of :mod:`emit.retrieval.mining` both use it), and without punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from emit.problems import EmitError
from emit.text.labels import CJK, load_jieba

LANGS = ("auto", "en", "zh")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script, no underscore

# The one English stop-word list: articles, pronouns, prepositions, conjunctions, auxiliaries.
# Words that say nothing about what a picture shows; shared ones would otherwise make nearly
# every pair of texts "overlap" when negatives are mined (emit.retrieval.mining). Kept small on
# purpose: content words such as "men", "two" or "top" are not here, and domain words ("new",
# "sale", "free shipping") neither; pass a set of your own for those.
_ENGLISH = """
    a an the this that these those
    i me my we us our you your he him his she her it its they them their
    and or but nor so if then than as
    of in on at to for from by with without into onto over under about up down out off
    is are was were be been being am do does did has have had will would can could
    not no very too just also
    what which who whom whose where when how
"""
STOPWORDS_EN: frozenset[str] = frozenset(_ENGLISH.split())
_CHINESE = "的 了 和 与 及 或 在 是 有 也 都 就 款 个"
# Offered for segmented Chinese text; not in the default (union it in explicitly).
STOPWORDS_ZH: frozenset[str] = frozenset(_CHINESE.split())


def tokenize(text: str, lang: str = "auto") -> list[str]:
    """Lowercase word tokens of ``text``.

    ``lang="auto"`` uses Jieba only if the text has CJK characters; ``"en"`` never does (a run
    of CJK characters then stays one token); ``"zh"`` always does.
    """
    if lang not in LANGS:
        raise EmitError(f"unknown tokenizer language {lang!r}; use one of {', '.join(LANGS)}")
    if not isinstance(text, str):
        raise EmitError(f"cannot tokenize a {type(text).__name__}; give a string")
    text = unicodedata.normalize("NFKC", text)
    if lang == "en" or (lang == "auto" and not CJK.search(text)):
        return _WORD.findall(text.lower())
    tokens: list[str] = []
    # segment before lowercasing: Jieba's dictionary has mixed entries such as "T恤"
    # and split each piece as English text: Jieba keeps "t-shirt" or "3.5" whole
    for piece in load_jieba().lcut(text):
        tokens.extend(_WORD.findall(piece.lower()))
    return tokens


def content_words(tokens: Iterable[str], stopwords: Iterable[str] = STOPWORDS_EN) -> list[str]:
    """The words of ``tokens`` that carry content, in order (repeats kept): each token stripped
    and case-folded, then dropped if it is a stop word or holds no letter or digit (punctuation).

    ``stopwords`` (lower case) default to :data:`STOPWORDS_EN`; give your own (e.g. with
    :data:`STOPWORDS_ZH` for segmented Chinese) to drop others.
    """
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    words = (t.strip().casefold() for t in tokens)
    return [w for w in words if w not in stop and any(ch.isalnum() for ch in w)]
