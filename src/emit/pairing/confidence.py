"""How sure is a product's pairing? A calibrated probability that *all* its images are right.

The signal is the assignment's **cost margin**: how much more the cheapest *other* labelling
of the product costs than the chosen one. Any labelling that differs from the chosen one
differs at some image i, so the runner-up is the best of the n sub-problems "image i may not
take its chosen tag", each solved with the same rule (exact or argmin) as the decision. A
product whose labelling has no alternative (one tag) has an infinite margin.

The margin, divided by the cost temperature, goes through Platt scaling,
``p = sigmoid(slope * margin + intercept)`` with ``slope >= 0``, so the probability never falls
as the margin grows. The two numbers are fitted on the training side only
(:mod:`emit.pairing.pipeline`): by default on out-of-fold bags, each trained on two thirds of
the products and deciding the third as the final model would; or, faster and under-confident,
on the products each bagged member held out for early stopping, scored by that member alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emit.pairing.assign import AssignMode, assign, total_cost

FORBIDDEN = 1e6  # added to a forbidden (image, tag) cost; far above any cross-entropy cost
RIDGE = 1e-2  # keeps the fit finite when the held-out products are all right (or all wrong)


def as_probability(value: Any) -> float | None:
    """``value`` as a float in [0, 1], or None if it is not one (read from a user's file or flag)."""
    # bool is an int to Python, and JSON allows NaN and Infinity: none is a probability; a
    # numpy float from a model is a number too
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        p = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None


def assignment_margin(cost: np.ndarray, choice: Sequence[int] | np.ndarray,
                      mode: AssignMode = "exact") -> float:
    """Cost of the cheapest labelling other than ``choice``, minus the cost of ``choice``.

    Non-negative when ``choice`` is the rule's optimum; ``inf`` when no other labelling exists.
    """
    cost = np.asarray(cost, dtype=np.float64)
    choice = np.asarray(choice, dtype=np.int64)
    n = cost.shape[0]
    if n == 0:
        return math.inf
    chosen = total_cost(cost, choice)
    best_other = math.inf
    for i in range(n):
        forbid = cost.copy()
        forbid[i, choice[i]] += FORBIDDEN
        other = assign(forbid, mode)
        if other[i] == choice[i]:  # nothing else is feasible for image i (e.g. one tag)
            continue
        best_other = min(best_other, total_cost(cost, other))
    return best_other - chosen


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the margin (in units of the cost temperature)."""

    slope: float = 1.0
    intercept: float = 0.0
    products: int = 0  # held-out products it was fitted on; 0 = not fitted (the defaults)

    def probability(self, margin: float) -> float:
        if math.isinf(margin):
            return 1.0
        z = self.slope * margin + self.intercept
        return float(1.0 / (1.0 + math.exp(-z))) if z > -700 else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {"slope": self.slope, "intercept": self.intercept, "products": self.products}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        return cls(float(data["slope"]), float(data["intercept"]), int(data.get("products", 0)))


def fit_calibration(margins: Sequence[float], correct: Sequence[bool]) -> Calibration:
    """Logistic regression of "all right" on the margin, by Newton's method, slope kept >= 0.

    Infinite margins are left out: those products are certain whatever the fit. With no
    finite margin at all, the defaults come back (``products == 0``).
    """
    x = np.asarray(margins, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return Calibration()
    design = np.stack([x, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -500, 500)))
        grad = design.T @ (p - y) + RIDGE * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.abs(step).max() < 1e-9:
            break
    if w[0] < 0:  # a falling fit is noise: confidence must not drop as the margin grows
        mean = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        w = np.array([0.0, math.log(mean / (1 - mean))])
    return Calibration(float(w[0]), float(w[1]), len(x))
