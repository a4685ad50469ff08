"""How a text vector and an image vector are compared: the one vocabulary of every score.

* ``'l2'``: squared Euclidean distance, the paper's; a score is ``-||t - v||^2`` (higher is nearer);
* ``'ip'``: the inner product of unit vectors, i.e. cosine similarity (InfoNCE models).

A model's metric is its loss's (:func:`emit.retrieval.losses.registry.loss_metric`), the score
maths is :func:`emit.retrieval.distances.score_matrix`, and an index searches with the same
metric. No torch here, so a configuration can name a metric without loading the models.
"""

from __future__ import annotations

from typing import Literal

from emit.problems import EmitError

Metric = Literal["l2", "ip"]
METRICS: tuple[Metric, ...] = ("l2", "ip")


class MetricError(EmitError, ValueError):
    """An unknown metric: an input error for a command, a ValueError for code that calls the maths."""


def check_metric(metric: str) -> Metric:
    """``metric`` if it is 'l2' or 'ip'; otherwise a :class:`MetricError` naming both."""
    if metric not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; use 'l2' or 'ip'")
    return metric  # type: ignore[return-value]
