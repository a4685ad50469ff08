import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.pairing.cost import cost_matrix


def slow_cost(logits, y, loss):
    out = np.zeros((len(logits), len(y)))
    for i, z in enumerate(logits):
        for t, target in enumerate(y):
            if loss == "bce":
                total = 0.0
                for zk, yk in zip(z, target, strict=True):
                    p = 1 / (1 + math.exp(-zk))
                    total -= yk * math.log(p) + (1 - yk) * math.log(1 - p)
                out[i, t] = total / len(z)
            else:
                exps = [math.exp(v) for v in z]
                probs = [e / sum(exps) for e in exps]
                q = [v / sum(target) for v in target]
                out[i, t] = -sum(qk * math.log(pk) for qk, pk in zip(q, probs, strict=True))
    return out


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 4).flatmap(lambda k: st.tuples(
        arrays(np.float64, (3, k + 1), elements=st.floats(-8, 8)),
        arrays(np.float64, (2, k + 1), elements=st.sampled_from([0.0, 1.0])),
    )),
    st.sampled_from(["bce", "softmax"]),
)
def test_cost_matches_reference(pair, loss):
    logits, y = pair
    y[:, -1] = np.where(y[:, :-1].sum(1) == 0, 1.0, y[:, -1])  # every tag has a label or "other"
    np.testing.assert_allclose(cost_matrix(logits, y, loss), slow_cost(logits, y, loss), rtol=1e-9)


def test_right_tag_is_cheapest():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=float)  # red, blue, red+blue
    logits = np.array([[6.0, -6.0, -6.0], [-6.0, 6.0, -6.0]])
    for loss in ("bce", "softmax"):
        c = cost_matrix(logits, y, loss)
        assert c[0].argmin() == 0 and c[1].argmin() == 1


def test_extreme_logits_stay_finite():
    c = cost_matrix(np.array([[1e4, -1e4]]), np.array([[0.0, 1.0]]), "bce")
    assert np.isfinite(c).all()


def test_bad_shapes_and_loss():
    with pytest.raises(ValueError):
        cost_matrix(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        cost_matrix(np.zeros((2, 3)), np.zeros((2, 3)), "hinge")  # type: ignore[arg-type]
