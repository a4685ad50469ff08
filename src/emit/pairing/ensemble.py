"""Combine the cost matrices of a bag of models into one tag per image.

* ``mean`` -- average the members' costs, then solve the assignment (exact by default).
* ``vote`` -- the paper's rule: each member labels every image by argmin; members whose labels
  cover all of the product's tags (when there are at least as many images as tags) are kept,
  and each image takes the majority tag among them (all members if none is kept). Ties go to
  the tag with the lower mean cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from emit.pairing.assign import AssignMode, assign, assign_argmin

CombineMode = Literal["mean", "vote"]


def combine_mean(costs: Sequence[np.ndarray], mode: AssignMode = "exact") -> np.ndarray:
    return assign(np.mean(np.stack(costs), axis=0), mode)


def combine_vote(costs: Sequence[np.ndarray]) -> np.ndarray:
    stacked = np.stack(costs)  # (members, n, m)
    _, n, m = stacked.shape
    choices = np.stack([assign_argmin(c) for c in stacked])  # (members, n)
    need = min(n, m)
    covering = [k for k, ch in enumerate(choices) if len(set(ch.tolist())) >= need]
    voters = choices[covering] if covering else choices
    votes = np.zeros((n, m))
    for ch in voters:
        votes[np.arange(n), ch] += 1
    mean_cost = stacked.mean(axis=0)
    # most votes first, then the lower mean cost
    return np.lexsort((mean_cost, -votes), axis=1)[:, 0] if n else np.zeros(0, dtype=np.int64)


def combine(costs: Sequence[np.ndarray], combine_mode: CombineMode = "mean",
            assign_mode: AssignMode = "exact") -> np.ndarray:
    if not costs:
        raise ValueError("no member costs to combine")
    if combine_mode == "mean":
        return combine_mean(costs, assign_mode)
    if combine_mode == "vote":
        return combine_vote(costs)
    raise ValueError(f"unknown combine mode {combine_mode!r}; use 'mean' or 'vote'")
