"""The CNN part's principal components: against numpy's SVD, in place of their columns, saved."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.pairing.projection import FeatureProjection, fit_projection

SEGMENTS = [("efficientnet-lite0", 0, 12), ("colour-hist", 12, 17)]


def features(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.r_[np.linspace(5, 0.5, 12), np.ones(5)]
    return (rng.normal(size=(rows, 17)) * scales).astype(np.float32)


def test_projects_the_cnn_part_onto_its_leading_principal_directions() -> None:
    x = features(200)
    proj = fit_projection(x, SEGMENTS, 4)
    assert proj is not None and proj.out_dim == 4 + 5
    out = proj.apply(x)
    # the same subspace as numpy's SVD of the centred CNN columns (signs may differ)
    cnn = x[:, :12].astype(np.float64) - x[:, :12].mean(axis=0)
    _, _, vt = np.linalg.svd(cnn, full_matrices=False)
    reference = cnn @ vt[:4].T
    assert np.allclose(np.abs(out[:, :4]), np.abs(reference), atol=1e-3)
    np.testing.assert_array_equal(out[:, 4:], x[:, 12:])  # the colour histogram passes through


def test_nothing_to_project() -> None:
    x = features(50)
    assert fit_projection(x, SEGMENTS, 0) is None  # 0 keeps all
    assert fit_projection(x, SEGMENTS, 12) is None  # not wider than asked
    assert fit_projection(x, [("colour-hist", 0, 17)], 4) is None  # hand-made features only


@settings(max_examples=25, deadline=None)
@given(st.integers(10, 60), st.integers(1, 11), st.integers(0, 10_000))
def test_round_trip_and_fixed_signs(rows: int, k: int, seed: int) -> None:
    x = features(rows, seed)
    proj = fit_projection(x, SEGMENTS, k)
    assert proj is not None
    again = fit_projection(x.copy(), SEGMENTS, k)
    np.testing.assert_allclose(proj.apply(x), again.apply(x), atol=1e-5)  # one data set, one model
    loaded = FeatureProjection.load(proj.meta(), proj.tensors())
    np.testing.assert_array_equal(loaded.apply(x), proj.apply(x))
    assert proj.apply(x).shape == (rows, k + 5)


def test_wrong_width_is_refused() -> None:
    proj = fit_projection(features(30), SEGMENTS, 3)
    with pytest.raises(ValueError, match="columns"):
        proj.apply(np.zeros((2, 16), dtype=np.float32))
