"""Turn a product's (images x tags) cost matrix into one tag per image.

* ``argmin`` -- each image independently takes its cheapest tag (the paper's rule).
* ``exact``  -- the optimum of "every image gets one tag, and every tag is used at least
  once" (possible when n_images >= n_tags). It is a linear assignment on an n x n matrix:
  the m tag columns plus n - m "free" columns whose cost for image i is i's cheapest tag.
  Any feasible labelling picks m distinct images to cover the m tags and lets the others
  take their cheapest tag, and that is exactly a perfect matching in the square matrix, so
  the Hungarian algorithm's optimum is the constrained optimum.
  When n_images < n_tags not every tag can be shown; then each image gets a *different* tag
  (the min-cost one-to-one matching), since a product's photos normally show distinct options.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

AssignMode = Literal["argmin", "exact"]


def assign_argmin(cost: np.ndarray) -> np.ndarray:
    return np.asarray(cost).argmin(axis=1)


def assign_exact(cost: np.ndarray) -> np.ndarray:
    """Tag index per image under the cover constraint (see module docstring)."""
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if m == 0:
        raise ValueError("a product needs at least one tag")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix has NaN or infinite entries")
    if n < m:
        rows, cols = linear_sum_assignment(cost)  # rectangular: every image a distinct tag
        out = np.empty(n, dtype=np.int64)
        out[rows] = cols
        return out
    cheapest = cost.argmin(axis=1)
    free = np.repeat(cost[np.arange(n), cheapest][:, None], n - m, axis=1)
    rows, cols = linear_sum_assignment(np.hstack([cost, free]))
    out = np.empty(n, dtype=np.int64)
    out[rows] = np.where(cols < m, cols, cheapest[rows])
    return out


def assign(cost: np.ndarray, mode: AssignMode = "exact") -> np.ndarray:
    if mode == "argmin":
        return assign_argmin(cost)
    if mode == "exact":
        return assign_exact(cost)
    raise ValueError(f"unknown assignment mode {mode!r}; use 'argmin' or 'exact'")


def total_cost(cost: np.ndarray, choice: np.ndarray) -> float:
    return float(np.asarray(cost)[np.arange(len(choice)), choice].sum())
