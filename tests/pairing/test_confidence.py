"""Product confidence: the assignment's cost margin against brute force, and its calibration."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.pairing.assign import assign, total_cost
from emit.pairing.confidence import Calibration, assignment_margin, fit_calibration


def feasible(n: int, m: int, mode: str) -> list[tuple[int, ...]]:
    """Every labelling the rule allows: argmin any; exact covers all tags (n >= m) or is one-to-one."""
    out = []
    for labels in itertools.product(range(m), repeat=n):
        if mode == "exact" and n >= m and len(set(labels)) < m:
            continue
        if mode == "exact" and n < m and len(set(labels)) < n:
            continue
        out.append(labels)
    return out


def brute_margin(cost: np.ndarray, choice: np.ndarray, mode: str) -> float:
    others = [total_cost(cost, np.array(lab)) for lab in feasible(*cost.shape, mode)
              if tuple(lab) != tuple(choice)]
    return min(others) - total_cost(cost, choice) if others else math.inf


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.sampled_from(["exact", "argmin"]), st.data())
def test_margin_matches_brute_force(n: int, m: int, mode: str, data: st.DataObject) -> None:
    cost = data.draw(arrays(np.float64, (n, m), elements=st.floats(0, 10, allow_nan=False)))
    choice = assign(cost, mode)
    got = assignment_margin(cost, choice, mode)
    want = brute_margin(cost, choice, mode)
    if math.isinf(want):
        assert math.isinf(got)
    else:
        assert got == np.float64(want) or abs(got - want) < 1e-9
        assert got >= -1e-9  # the chosen labelling is the optimum


def test_one_tag_has_no_alternative() -> None:
    assert math.isinf(assignment_margin(np.array([[0.3], [0.9]]), np.array([0, 0])))


def test_confidence_is_monotone_in_the_margin_on_constructed_products() -> None:
    """Two images, two tags: the gap between the diagonal and the swap sets the margin."""
    cal = fit_calibration([0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 0.3, 2.5], [0, 0, 1, 1, 1, 1, 0, 1])
    assert cal.slope > 0
    probs = []
    for gap in [0.0, 0.1, 0.5, 1.0, 2.0, 5.0]:
        cost = np.array([[0.0, gap / 2], [gap / 2, 0.0]])
        choice = assign(cost, "exact")
        margin = assignment_margin(cost, choice, "exact")
        assert abs(margin - gap) < 1e-9
        probs.append(cal.probability(margin))
    assert probs == sorted(probs)
    assert probs[-1] > probs[0]


def test_fit_recovers_a_known_logistic() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 6, 20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(1.5 * x - 2.0)))
    cal = fit_calibration(x, y)
    assert abs(cal.slope - 1.5) < 0.1 and abs(cal.intercept + 2.0) < 0.15
    assert cal.products == 20_000


def test_fit_never_falls_and_stays_finite() -> None:
    falling = fit_calibration([0.0, 1.0, 2.0, 3.0], [1, 1, 0, 0])
    assert falling.slope == 0 and abs(falling.probability(0.0) - 0.5) < 1e-6
    all_right = fit_calibration([0.5, 1.0, 2.0], [1, 1, 1])
    assert all_right.slope >= 0 and math.isfinite(all_right.intercept)
    assert all_right.probability(2.0) > 0.5
    assert fit_calibration([math.inf], [1]) == Calibration()  # nothing finite: the defaults


def test_calibration_round_trips_and_certain_products() -> None:
    cal = Calibration(2.0, -1.0, 40)
    assert Calibration.from_json(cal.to_json()) == cal
    assert cal.probability(math.inf) == 1.0
    assert abs(cal.probability(0.5) - 0.5) < 1e-12
