"""tokenize: English words, Jieba for CJK, stop words."""

from __future__ import annotations

import pytest

from emit.problems import EmitError
from emit.text.tokenize import STOPWORDS_EN, content_words, tokenize


def test_english_is_lowercased_and_split_on_punctuation() -> None:
    assert tokenize("Turtle Check Men Navy-Blue Shirt!") == [
        "turtle", "check", "men", "navy", "blue", "shirt"]
    assert tokenize("A child's 2 dogs, (running) ... _x_") == ["a", "child", "s", "2", "dogs", "running", "x"]
    assert tokenize("Café crème") == ["café", "crème"]
    assert tokenize("") == [] and tokenize("  .,;  ") == []


def test_full_width_characters_are_normalised() -> None:
    assert tokenize("ＡＢＣ１２ Shirt") == ["abc12", "shirt"]


def test_chinese_is_segmented_with_jieba() -> None:
    tokens = tokenize("白色【加绒】 K38893枣红色")
    assert "白色" in tokens and "k38893" in tokens
    assert "【" not in "".join(tokens) and "】" not in "".join(tokens)
    assert "".join(tokens) == "白色加绒k38893枣红色"  # nothing but the brackets and spaces is lost
    mixed = tokenize("red 连衣裙 dress")
    assert mixed[0] == "red" and mixed[-1] == "dress" and "".join(mixed[1:-1]) == "连衣裙"


def test_lang_switch() -> None:
    assert tokenize("红色连衣裙 dress", lang="en") == ["红色连衣裙", "dress"]  # no Jieba: one CJK run
    assert tokenize("a red dress", lang="zh") == ["a", "red", "dress"]
    with pytest.raises(EmitError, match="unknown tokenizer language"):
        tokenize("x", lang="fr")


def test_content_words() -> None:
    tokens = tokenize("A dog is running in the grass with its owner")
    assert content_words(tokens) == ["dog", "running", "grass", "owner"]
    assert content_words(["men", "navy", "shirt"]) == ["men", "navy", "shirt"]
    assert content_words(["a", "red", "的"], stopwords=["的", "a"]) == ["red"]
    assert {"a", "the", "of"} <= STOPWORDS_EN and "men" not in STOPWORDS_EN
