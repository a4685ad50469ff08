import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.pairing.assign import assign, assign_argmin, assign_exact, total_cost


def brute_force(cost: np.ndarray) -> float:
    """Slow reference: try every labelling that satisfies the constraint."""
    n, m = cost.shape
    best = np.inf
    for choice in itertools.product(range(m), repeat=n):
        used = set(choice)
        feasible = len(used) == m if n >= m else len(used) == n
        if feasible:
            best = min(best, sum(cost[i, t] for i, t in enumerate(choice)))
    return best


costs = st.tuples(st.integers(1, 6), st.integers(1, 5)).flatmap(
    lambda nm: arrays(np.float64, nm, elements=st.floats(0, 10, allow_nan=False, width=32))
)


@settings(max_examples=300, deadline=None)
@given(costs)
def test_exact_matches_brute_force(cost):
    choice = assign_exact(cost)
    n, m = cost.shape
    assert choice.shape == (n,)
    assert ((choice >= 0) & (choice < m)).all()
    assert total_cost(cost, choice) == pytest.approx(brute_force(cost), abs=1e-9)
    if n >= m:
        assert set(choice.tolist()) == set(range(m)), "every tag must be used"
    else:
        assert len(set(choice.tolist())) == n, "with fewer images than tags, tags are distinct"


@settings(max_examples=100, deadline=None)
@given(costs)
def test_exact_never_cheaper_than_argmin(cost):
    assert total_cost(cost, assign_exact(cost)) >= total_cost(cost, assign_argmin(cost)) - 1e-9


def test_exact_fixes_a_collision():
    # both images prefer tag 0; the cover constraint forces the cheaper swap
    cost = np.array([[0.1, 0.2], [0.3, 0.9]])
    assert assign_argmin(cost).tolist() == [0, 0]
    assert assign_exact(cost).tolist() == [1, 0]


def test_extra_images_take_their_cheapest_tag():
    cost = np.array([[0.0, 5.0], [5.0, 0.0], [1.0, 2.0], [3.0, 0.5]])
    assert assign_exact(cost).tolist() == [0, 1, 0, 1]


def test_modes_and_errors():
    cost = np.array([[1.0, 0.0]])
    assert assign(cost, "argmin").tolist() == [1]
    with pytest.raises(ValueError):
        assign(cost, "nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        assign_exact(np.array([[np.nan, 1.0]]))
    assert assign_exact(np.zeros((0, 3))).shape == (0,)
