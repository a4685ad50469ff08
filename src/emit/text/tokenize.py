"""Split titles, queries and captions into lowercase tokens.

English (and any text in a Latin or other alphabetic script) is split into runs of letters and
digits: punctuation and white space separate tokens and are dropped, so ``"Men's T-Shirt"``
becomes ``["men", "s", "t", "shirt"]``. Text with CJK characters is segmented with Jieba (the
same cached loader as :mod:`emit.text.labels`), and the non-CJK pieces Jieba returns are split
as above, so mixed text such as ``"黑色T恤 2件"`` works. The text is NFKC-normalised first, so
full-width letters and digits (``ＡＢＣ１２``) become ordinary ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from emit.problems import EmitError
from emit.text.labels import _CJK, _jieba

LANGS = ("auto", "en", "zh")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script, no underscore

# Function words that say nothing about what a picture shows. Kept small on purpose: words
# such as "men", "two", "top" or "up" can matter for retrieval.
STOPWORDS_EN: frozenset[str] = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "by", "from",
    "into", "onto", "over", "as", "is", "are", "was", "were", "be", "been", "being", "am", "it", "its",
    "this", "that", "these", "those", "there", "their", "his", "her", "s", "t", "while", "who", "which",
    "what", "very",
})


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
    if lang == "en" or (lang == "auto" and not _CJK.search(text)):
        return _WORD.findall(text.lower())
    tokens: list[str] = []
    # segment before lowercasing: Jieba's dictionary has mixed entries such as "T恤"
    # and split each piece as English text: Jieba keeps "t-shirt" or "3.5" whole
    for piece in _jieba().lcut(text):
        tokens.extend(_WORD.findall(piece.lower()))
    return tokens


def content_words(tokens: Iterable[str], stopwords: Iterable[str] = STOPWORDS_EN) -> list[str]:
    """``tokens`` without the stop words, in order."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    return [t for t in tokens if t not in stop]
