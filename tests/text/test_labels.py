import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.problems import EmitError
from emit.text.labels import OTHER, LabelVocab, build_vocab, coverage, normalise_label, segment


def test_segment_drops_codes_and_punctuation():
    assert segment("K38893枣红色") == ["枣红"]
    assert "白" in segment("白色【加绒】") and "加绒" in segment("白色【加绒】")
    assert segment("2801-黑色") == ["黑"]
    assert segment("12345") == []


def test_normalise_label():
    assert normalise_label("藏青色") == "藏青"
    assert normalise_label("藏青色", strip_colour_suffix=False) == "藏青色"
    assert normalise_label("色") is None
    assert normalise_label("LS") is None


def test_vocab_min_count_and_top_k():
    tags = ["黑色"] * 6 + ["白色"] * 5 + ["红色"] * 4
    vocab = build_vocab(tags, min_count=5, top_k=64)
    assert vocab.labels == ["黑", "白"]
    assert build_vocab(tags, min_count=1, top_k=1).labels == ["黑"]
    with pytest.raises(EmitError):
        build_vocab(tags, min_count=0)


def test_vocab_is_independent_of_order():
    tags = ["黑色", "白色", "红色", "蓝色"] * 3
    assert build_vocab(tags, 1, 3).labels == build_vocab(tags[::-1], 1, 3).labels


def test_multi_hot_by_substring_with_other_slot():
    vocab = LabelVocab(labels=["黑", "白", "加绒"], counts=[9, 8, 7])
    assert vocab.names[-1] == OTHER
    np.testing.assert_array_equal(vocab.encode("黑色【加绒】"), [1, 0, 1, 0])
    np.testing.assert_array_equal(vocab.encode("白色上衣+黑色裤子"), [1, 1, 0, 0])
    np.testing.assert_array_equal(vocab.encode("K38893枣红色"), [0, 0, 0, 1])
    assert vocab.encode_many([]).shape == (0, 4)


def test_vocab_round_trip(tmp_path):
    vocab = build_vocab(["黑色", "白色", "黑色"], min_count=1)
    vocab.save(tmp_path / "vocab.json")
    again = LabelVocab.load(tmp_path / "vocab.json")
    assert again == vocab and again.encode("黑色").tolist() == vocab.encode("黑色").tolist()


def test_coverage_counts_distinct_and_occurrences():
    vocab = LabelVocab(labels=["黑"], counts=[3])
    cov = coverage(vocab, ["黑色", "黑色", "白色"])
    assert cov["distinct_coverage"] == 0.5
    assert cov["occurrence_coverage"] == pytest.approx(2 / 3)
    assert cov["uncovered_examples"] == ["白色"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["黑色", "白色", "藏青色", "K1红色", "【灰色】", "米白"]), min_size=1))
def test_every_tag_gets_a_label_or_other(tags):
    vocab = build_vocab(tags, min_count=1, top_k=3)
    emb = vocab.encode_many(tags)
    assert (emb.sum(axis=1) >= 1).all()
    assert ((emb[:, -1] == 1) == (emb[:, :-1].sum(axis=1) == 0)).all()
