"""The training losses, one record each: the single source of their names, metrics and help.

Every loss is called the same way (as sentence-transformers' losses are)::

    per_pair = get_loss(name)(batch, config)  # (B,) losses of a LossBatch, before weighting

where ``batch`` is a :class:`emit.retrieval.losses.batch.LossBatch` (texts and images of one
task's batch, their image rows, tokens, weights, the margin, the temperature and -- for a loss
that ``needs_negatives`` -- the mined negatives) and ``config`` the run's
:class:`~emit.retrieval.config.RetrievalConfig`. ``metric`` says how the trained model compares
texts with images: 'l2' (squared distance) or 'ip' (cosine); see :mod:`emit.retrieval.metric`.

Adding a loss is one new file in this package, ``<name>.py`` defining
``per_pair(batch, config)``, and one :class:`LossSpec` line in :data:`LOSSES`. The function is
looked up in its module on first call, so naming losses -- the configuration, the command line
-- never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from emit.problems import EmitError
from emit.retrieval.metric import Metric


@dataclass(frozen=True)
class LossSpec:
    """One training loss: its name, how its model compares vectors, whether it needs mined
    negatives, one line of help, and the module that defines its ``per_pair(batch, config)``."""

    name: str
    metric: Metric
    needs_negatives: bool
    help: str
    module: str = ""  # default: emit.retrieval.losses.<name>

    @property
    def module_name(self) -> str:
        return self.module or f"emit.retrieval.losses.{self.name}"

    @property
    def function(self) -> Callable[[Any, Any], Any]:
        """``per_pair(batch, config) -> (B,) tensor`` of the loss's module."""
        return _per_pair(self.module_name)

    def __call__(self, batch: Any, config: Any) -> Any:
        return self.function(batch, config)


@cache
def _per_pair(module: str) -> Callable[[Any, Any], Any]:
    fn = getattr(importlib.import_module(module), "per_pair", None)
    if not callable(fn):
        raise EmitError(f"{module} defines no per_pair(batch, config); every loss module must")
    return fn  # type: ignore[no-any-return]


LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("patr", "l2", True, "positive-aware triplet ranking on squared distances, mined negatives "
                                 "(Aggarwal et al. 2019)"),
    LossSpec("triplet", "l2", True, "triplet ranking on squared distances, mined negatives"),
    LossSpec("l2", "l2", False, "squared distance to the own image only (no negatives; a baseline)"),
    LossSpec("vse", "l2", False, "VSE++ hardest in-batch negative, on squared distances"),
    LossSpec("infonce", "ip", False, "symmetric InfoNCE over cosine similarities (CLIP-style)"),
)}


def list_losses() -> list[str]:
    """The loss names, in the order of :data:`LOSSES`."""
    return list(LOSSES)


def get_loss(name: str) -> LossSpec:
    spec = LOSSES.get(name)
    if spec is None:
        raise EmitError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return spec


def loss_metric(name: str) -> Metric:
    """How a model trained with loss ``name`` compares texts with images: 'l2' or 'ip'."""
    return get_loss(name).metric


def describe_losses() -> dict[str, str]:
    """Each loss's one line of help (for choices in a command line)."""
    return {name: spec.help for name, spec in LOSSES.items()}
