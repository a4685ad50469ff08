import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.pairing.assign import assign
from emit.pairing.ensemble import combine, combine_mean, combine_vote


def vote_reference(costs: list[np.ndarray]) -> list[int]:
    """Slow reading of the paper's rule, written from the module docstring."""
    stacked = np.stack(costs)
    _, n, m = stacked.shape
    labels = [[int(np.argmin(c[i])) for i in range(n)] for c in stacked]
    need = min(n, m)
    keep = [lab for lab in labels if len(set(lab)) >= need]
    voters = keep or labels
    mean = stacked.mean(axis=0)
    out = []
    for i in range(n):
        votes = [sum(lab[i] == t for lab in voters) for t in range(m)]
        # most votes, then lower mean cost, then the lower index
        out.append(min(range(m), key=lambda t: (-votes[t], mean[i, t], t)))
    return out


def one_hot_cost(labels: list[int], m: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A member whose argmin labels are ``labels``."""
    cost = np.full((len(labels), m), high)
    cost[np.arange(len(labels)), labels] = low
    return cost


# ---- vote: hand-built stacks where the rule matters ---------------------------------------


def test_vote_keeps_only_covering_members():
    # Two members put every image on tag 0; one member covers all three tags.
    # A plain majority would say [0, 0, 0]; the paper's rule listens to the covering member.
    lazy = one_hot_cost([0, 0, 0], 3)
    covering = one_hot_cost([2, 0, 1], 3)
    assert combine_vote([lazy, lazy, covering]).tolist() == [2, 0, 1]
    assert combine_vote([covering, lazy, lazy]).tolist() == [2, 0, 1]


def test_vote_majority_among_covering_members():
    a = one_hot_cost([0, 1, 2], 3)
    b = one_hot_cost([0, 1, 2], 3)
    c = one_hot_cost([1, 0, 2], 3)  # covers too, but is outvoted
    lazy = one_hot_cost([1, 1, 1], 3)  # does not cover: ignored even though it agrees with c
    assert combine_vote([a, b, c, lazy, lazy, lazy]).tolist() == [0, 1, 2]


def test_vote_tie_goes_to_lower_mean_cost():
    # Two covering members disagree on images 0 and 1: one vote each.
    a = np.array([[0.0, 0.9], [0.9, 0.0]])
    b = np.array([[0.8, 0.1], [0.1, 0.8]])
    # mean: [[0.4, 0.5], [0.5, 0.4]] -> tag 0 for image 0, tag 1 for image 1
    assert combine_vote([a, b]).tolist() == [0, 1]
    # make member b more certain: the mean now favours b's labels
    b2 = np.array([[3.0, 0.0], [0.0, 3.0]])
    assert combine_vote([a, b2]).tolist() == [1, 0]


def test_vote_all_members_vote_when_none_covers():
    # nobody covers the three tags; majority of all three members per image
    m1 = one_hot_cost([0, 0, 1], 3)
    m2 = one_hot_cost([0, 1, 1], 3)
    m3 = one_hot_cost([2, 1, 1], 3)
    assert combine_vote([m1, m2, m3]).tolist() == [0, 1, 1]


def test_vote_with_fewer_images_than_tags_needs_distinct_labels():
    # 2 images, 4 tags: a member "covers" when its two labels differ
    same = one_hot_cost([3, 3], 4)
    distinct = one_hot_cost([1, 2], 4)
    assert combine_vote([same, same, distinct]).tolist() == [1, 2]


def test_vote_single_member_is_argmin():
    cost = np.array([[0.3, 0.1, 0.2], [0.5, 0.6, 0.1]])
    assert combine_vote([cost]).tolist() == [1, 2]


def test_vote_no_images():
    assert combine_vote([np.zeros((0, 3)), np.zeros((0, 3))]).shape == (0,)


member_stacks = st.tuples(st.integers(1, 4), st.integers(0, 6), st.integers(1, 4)).flatmap(
    lambda knm: st.lists(
        arrays(np.float64, knm[1:], elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])),
        min_size=knm[0], max_size=knm[0],
    )
)


@settings(max_examples=300, deadline=None)
@given(member_stacks)
def test_vote_matches_reference(costs):
    choice = combine_vote(costs)
    n, m = costs[0].shape
    assert choice.shape == (n,)
    assert ((choice >= 0) & (choice < m)).all()
    assert choice.tolist() == vote_reference(costs)


# ---- mean --------------------------------------------------------------------------------

stacks = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 4)).flatmap(
    lambda knm: st.lists(
        arrays(np.float64, knm[1:], elements=st.floats(0, 5, allow_nan=False, width=32)),
        min_size=knm[0], max_size=knm[0],
    )
)


@settings(max_examples=200, deadline=None)
@given(stacks, st.sampled_from(["exact", "argmin"]))
def test_mean_is_assign_on_the_average(costs, mode):
    expected = assign(np.mean(np.stack(costs), axis=0), mode)
    np.testing.assert_array_equal(combine_mean(costs, mode), expected)
    np.testing.assert_array_equal(combine(costs, "mean", mode), expected)


def test_mean_differs_from_vote_where_it_should():
    # member a is nearly indifferent, member b is sure: the mean follows b, the vote ties
    # and is broken by the same mean, so both agree here ...
    a = np.array([[0.0, 0.01], [0.01, 0.0]])
    b = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert combine_mean([a, b]).tolist() == [1, 0]
    assert combine([a, b], "vote").tolist() == [1, 0]
    # ... but with two indifferent members the vote outnumbers the confident one
    assert combine([a, a, b], "vote").tolist() == [0, 1]
    assert combine([a, a, b], "mean").tolist() == [1, 0]


def test_mean_exact_covers_all_tags():
    a = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert sorted(set(combine_mean([a, a]).tolist())) == [0, 1]
    assert combine_mean([a, a], "argmin").tolist() == [0, 0, 0]


# ---- dispatch ----------------------------------------------------------------------------


def test_unknown_mode_and_empty_stack():
    cost = np.array([[0.0, 1.0]])
    with pytest.raises(ValueError, match="combine mode"):
        combine([cost], "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        combine([], "mean")
    with pytest.raises(ValueError):
        combine([cost], "mean", "greedy")  # type: ignore[arg-type]
