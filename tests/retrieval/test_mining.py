import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.retrieval.losses.patr import patr_loss
from emit.retrieval.mining import mine_negatives, word_overlap_matrix
from emit.text.tokenize import STOPWORDS_EN as ENGLISH_STOPWORDS
from emit.text.tokenize import STOPWORDS_ZH as CHINESE_STOPWORDS
from emit.text.tokenize import content_words

# Small vocabulary with stopwords, case variants and punctuation, so overlaps are frequent.
VOCAB = ["red", "Red", "dress", "silk", "shoe", "the", "a", "of", ",", "红色", "连衣裙"]


def slow_words(tokens, stopwords):
    out = set()
    for tok in tokens:
        w = tok.strip().casefold()
        if w not in stopwords and any(ch.isalnum() for ch in w):
            out.add(w)
    return out


def slow_overlap(token_lists, stopwords, mode):
    words = [slow_words(t, stopwords) for t in token_lists]
    b = len(token_lists)
    out = np.zeros((b, b), dtype=bool)
    for i in range(b):
        for j in range(b):
            if mode == "any":
                out[i, j] = len(words[i] & words[j]) > 0
            else:
                out[i, j] = len(words[i]) > 0 and words[i] <= words[j]
    return out


def slow_mine(text, image, token_lists, ids, n, mode, stopwords=ENGLISH_STOPWORDS):
    """Per anchor: allowed images (first column of each) sorted by (distance, index), padded with
    the anchor itself."""
    words = [slow_words(t, stopwords) for t in token_lists]
    index, valid, dists, allowed = [], [], [], []
    def barred(i, j):
        return (mode == "any" and bool(words[i] & words[j])) or (
            mode == "all" and bool(words[i]) and words[i] <= words[j])

    for i in range(len(text)):
        cands = []
        for j in range(len(text)):
            group = [k for k in range(len(text)) if ids[k] == ids[j]]
            if j != min(group) or ids[j] == ids[i] or any(barred(i, k) for k in group):
                continue  # one candidate per image, barred if any of its texts is
            d = sum((x - y) ** 2 for x, y in zip(text[i], image[j], strict=True))
            cands.append((d, j))
        cands.sort()
        allowed.append({j for _, j in cands})
        chosen = cands[:n]
        index.append([j for _, j in chosen] + [i] * (n - len(chosen)))
        valid.append([True] * len(chosen) + [False] * (n - len(chosen)))
        dists.append([d for d, _ in chosen])
    shape = (len(text), n)
    index_arr = np.array(index, dtype=np.int64).reshape(shape)
    return index_arr, np.array(valid, dtype=bool).reshape(shape), dists, allowed


token_lists_st = st.integers(1, 6).flatmap(
    lambda b: st.lists(st.lists(st.sampled_from(VOCAB), max_size=4), min_size=b, max_size=b)
)


@st.composite
def batches(draw):
    tokens = draw(token_lists_st)
    b, d = len(tokens), draw(st.integers(1, 3))
    el = st.floats(-5, 5)
    text = draw(arrays(np.float64, (b, d), elements=el))
    image = draw(arrays(np.float64, (b, d), elements=el))
    ids = draw(arrays(np.int64, (b,), elements=st.integers(0, 3)))
    return text, image, tokens, ids


@settings(max_examples=80, deadline=None)
@given(token_lists_st, st.sampled_from(["any", "all"]))
def test_overlap_matches_reference(tokens, mode):
    got = word_overlap_matrix(tokens, mode=mode).numpy()
    np.testing.assert_array_equal(got, slow_overlap(tokens, ENGLISH_STOPWORDS, mode))


@settings(max_examples=60, deadline=None)
@given(token_lists_st)
def test_all_excludes_a_subset_of_any(tokens):
    any_ = word_overlap_matrix(tokens, mode="any")
    all_ = word_overlap_matrix(tokens, mode="all")
    assert not (all_ & ~any_).any()


@settings(max_examples=100, deadline=None)
@given(batches(), st.integers(0, 7), st.sampled_from(["any", "all", "none"]))
def test_mining_matches_double_loop(batch, n, mode):
    text, image, tokens, ids = batch
    got_index, got_valid = mine_negatives(torch.from_numpy(text), torch.from_numpy(image), tokens,
                                          torch.from_numpy(ids), n, mode)
    want_index, want_valid, want_dist, allowed = slow_mine(
        text.tolist(), image.tolist(), tokens, ids.tolist(), n, mode
    )
    assert got_index.shape == got_valid.shape == (len(text), n)
    assert got_index.dtype == torch.long and got_valid.dtype == torch.bool
    np.testing.assert_array_equal(got_valid.numpy(), want_valid)
    np.testing.assert_array_equal(got_index.numpy()[~want_valid], want_index[~want_valid])  # padding: self
    # Valid slots: distinct allowed candidates at the reference's N smallest distances. Compared by
    # distance, not index, since near-ties may order differently across the two ways of summing.
    for i in range(len(text)):
        chosen = got_index[i][got_valid[i]].tolist()
        assert len(set(chosen)) == len(chosen) and set(chosen) <= allowed[i]
        got_d = [float(((text[i] - image[j]) ** 2).sum()) for j in chosen]
        np.testing.assert_allclose(got_d, want_dist[i], rtol=1e-9, atol=1e-9)


def test_same_image_is_never_a_negative():
    # Pair 1 shows pair 0's image and is nearest; it must be skipped even in mode 'none'.
    text = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    image = torch.tensor([[0.0], [0.1], [5.0], [9.0]])
    idx, valid = mine_negatives(text, image, None, ["x", "x", "y", "z"], 2, "none")
    assert idx.tolist() == [[2, 3], [2, 3], [3, 0], [2, 0]]  # image x once, at its first column
    assert valid.all()


def test_negatives_are_distinct_images():
    # Three captions of image "a" sit nearest the anchor; it may be taken once only.
    text = torch.tensor([[0.0], [1.0], [1.0], [1.0], [4.0]])
    idx, valid = mine_negatives(text, text.clone(), None, ["q", "a", "a", "a", "b"], 3, "none")
    assert idx[0][valid[0]].tolist() == [1, 4]


def test_an_image_is_barred_when_any_of_its_texts_shares_words():
    text = image = torch.tensor([[0.0], [1.0], [1.0], [3.0]])
    tokens = [["red", "dress"], ["blue", "coat"], ["a", "red", "coat"], ["green", "hat"]]
    idx, valid = mine_negatives(text, image, tokens, ["q", "a", "a", "b"], 3, "any")
    assert idx[0][valid[0]].tolist() == [3]  # image a has a caption with 'red'


def test_padding_and_valid_mask():
    text = image = torch.tensor([[0.0], [1.0], [2.0]])
    tokens = [["red", "dress"], ["red", "shoe"], ["blue", "hat"]]
    idx, valid = mine_negatives(text, image, tokens, torch.tensor([0, 1, 1]), 4, "any")
    # 0: image 1 has a text sharing "red" -> nothing. 1: same image as 2, and image 0 shares
    # "red" -> nothing. 2: same image as 1 -> only 0.
    assert valid.tolist() == [[False] * 4, [False] * 4, [True, False, False, False]]
    assert idx.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [0, 2, 2, 2]]
    # The padded indices are in range and ignored by the loss through the mask.
    loss = patr_loss(text, image, image[idx], 1.0, valid, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.0, 0.0, 0.0]))


def test_modes_on_a_constructed_batch():
    text = image = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    tokens = [["red", "silk", "dress"], ["red", "shoe"], ["the", "red", "silk", "Dress", "!"], ["a", "hat"]]
    ids = torch.arange(4)
    any_idx, any_valid = mine_negatives(text, image, tokens, ids, 3, "any")
    all_idx, all_valid = mine_negatives(text, image, tokens, ids, 3, "all")
    none_idx, _ = mine_negatives(text, image, tokens, ids, 3, "none")
    assert any_idx[0][any_valid[0]].tolist() == [3]  # 1 and 2 share "red"
    assert all_idx[0][all_valid[0]].tolist() == [1, 3]  # only 2 holds all of red/silk/dress
    assert none_idx[0].tolist() == [1, 2, 3]


def test_precomputed_matrix_equals_tokens():
    g = torch.Generator().manual_seed(3)
    text, image = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    tokens = [["red"], ["red", "dress"], ["shoe"], [], ["dress"]]
    ids = torch.tensor([0, 1, 2, 3, 4])
    for mode in ("any", "all"):
        shares = word_overlap_matrix(tokens, mode=mode)
        a = mine_negatives(text, image, tokens, ids, 3, mode)
        b = mine_negatives(text, image, shares, ids, 3, mode)
        c = mine_negatives(text, image, shares.numpy(), ids, 3, mode)
        for x, y in ((a, b), (a, c)):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_stopwords_case_punctuation_and_chinese():
    assert set(content_words(["The", "Red", ",", "dress", "  "])) == {"red", "dress"}
    assert {"the", "of", "and"} <= ENGLISH_STOPWORDS
    tokens = [["红色", "的", "连衣裙"], ["的", "衬衫"], ["红色"]]
    assert word_overlap_matrix(tokens, mode="any")[0].tolist() == [True, True, True]  # "的" shared
    zh = ENGLISH_STOPWORDS | CHINESE_STOPWORDS
    assert word_overlap_matrix(tokens, zh, "any")[0].tolist() == [True, False, True]
    custom = word_overlap_matrix([["red", "dress"], ["red"]], stopwords={"RED"}, mode="any")
    assert custom.tolist() == [[True, False], [False, False]]
    # An anchor with no content word excludes nothing in 'all' mode (not everything).
    assert not word_overlap_matrix([["the"], ["red"]], mode="all")[0].any()


def test_no_gradient_and_bad_arguments():
    text = torch.randn(3, 2, requires_grad=True)
    idx, _ = mine_negatives(text, torch.randn(3, 2), None, None, 1, "none")
    assert not idx.requires_grad
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        mine_negatives(x, x, None, None, 1, "any")
    with pytest.raises(ValueError):
        mine_negatives(x, x, None, None, 1, "some")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mine_negatives(x, x, [["a"]], None, 1, "any")
    with pytest.raises(ValueError):
        mine_negatives(x, x, torch.zeros(3, 3), None, 1, "any")  # not bool
    with pytest.raises(ValueError):
        mine_negatives(x, x, None, [0, 1], 1, "none")
    with pytest.raises(ValueError):
        mine_negatives(x, torch.zeros(3, 4), None, None, 1, "none")
    with pytest.raises(TypeError):
        word_overlap_matrix(["red dress", "shoe"])
