"""Product image -> option tag pairing (EMIT): tagging, costs, assignment and evaluation.

The names a library user needs are importable from here (``from emit.pairing import
train_pairing``); ``assign`` is not among them, being also the name of a submodule. They load
on first use, so importing one light module (say ``emit.pairing.assign``) does not pull in
torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "PairingConfig": "emit.config",
    "PairingModel": "emit.pairing.model",
    "ProductFeatures": "emit.pairing.pipeline",
    "ProductDecision": "emit.pairing.pipeline",
    "extract_product_features": "emit.pairing.pipeline",
    "train_pairing": "emit.pairing.pipeline",
    "predict_pairing": "emit.pairing.pipeline",
    "predict_products": "emit.pairing.pipeline",
    "cost_matrix": "emit.pairing.cost",
    "assign_exact": "emit.pairing.assign",
    "assign_argmin": "emit.pairing.assign",
    "combine": "emit.pairing.ensemble",
    "load_pairing_model": "emit.pairing.jobs",
    "write_model_folder": "emit.pairing.jobs",
    "write_predictions": "emit.pairing.jobs",
    "train_job": "emit.pairing.jobs",
    "predict_job": "emit.pairing.jobs",
    "evaluate_job": "emit.pairing.jobs",
    "evaluate_pairing": "emit.pairing.report",
}

__all__ = [
    "PairingConfig",
    "PairingModel",
    "ProductDecision",
    "ProductFeatures",
    "assign_argmin",
    "assign_exact",
    "combine",
    "cost_matrix",
    "evaluate_job",
    "evaluate_pairing",
    "extract_product_features",
    "load_pairing_model",
    "predict_job",
    "predict_pairing",
    "predict_products",
    "train_job",
    "train_pairing",
    "write_model_folder",
    "write_predictions",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from emit.config import PairingConfig
    from emit.pairing.assign import assign_argmin, assign_exact
    from emit.pairing.cost import cost_matrix
    from emit.pairing.ensemble import combine
    from emit.pairing.jobs import (
        evaluate_job,
        load_pairing_model,
        predict_job,
        train_job,
        write_model_folder,
        write_predictions,
    )
    from emit.pairing.model import PairingModel
    from emit.pairing.pipeline import (
        ProductDecision,
        ProductFeatures,
        extract_product_features,
        predict_pairing,
        predict_products,
        train_pairing,
    )
    from emit.pairing.report import evaluate_pairing


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emit.pairing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
