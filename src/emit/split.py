"""Deterministic product-level train/validation split.

A product goes to validation when a hash of (seed, product id) falls below the fraction, so
the split does not depend on file order or on which other products exist: adding products
never moves an existing one to the other side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def hash_fraction(product_id: str, seed: int = 0) -> float:
    """A fixed point in [0, 1) for (seed, product id): the split's coordinate of the product."""
    digest = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_validation(product_id: str, fraction: float, seed: int = 0) -> bool:
    return hash_fraction(product_id, seed) < fraction


def split_ids(ids: Iterable[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Return (train_ids, val_ids), each in the input order."""
    if not 0 <= fraction < 1:
        raise ValueError("validation fraction must be in [0, 1)")
    train: list[str] = []
    val: list[str] = []
    for pid in ids:
        (val if in_validation(pid, fraction, seed) else train).append(pid)
    return train, val
