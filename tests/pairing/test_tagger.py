
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.pairing.cost import tag_costs
from emit.pairing.tagger import (
    LabelledImages,
    fit_head,
    restrict_labels,
    with_product_context,
)

# ---- product context ---------------------------------------------------------------------


def context_reference(features: np.ndarray, groups: list[int]) -> np.ndarray:
    """Slow loop: each row minus the mean of its group, appended to the row."""
    out = []
    for i, g in enumerate(groups):
        members = [j for j, h in enumerate(groups) if h == g]
        mean = np.mean([features[j].astype(np.float64) for j in members], axis=0)
        out.append(np.concatenate([features[i], features[i] - mean]))
    return np.array(out)


@st.composite
def grouped_features(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 5))
    # arbitrary, non-contiguous, unsorted group ids
    groups = draw(st.lists(st.sampled_from([-3, 0, 2, 7, 100]), min_size=n, max_size=n))
    values = draw(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=n * d,
                           max_size=n * d))
    return np.array(values, dtype=np.float32).reshape(n, d), groups


@settings(max_examples=200, deadline=None)
@given(grouped_features())
def test_product_context_matches_loop(fg):
    features, groups = fg
    got = with_product_context(features, groups)
    assert got.shape == (features.shape[0], 2 * features.shape[1])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, context_reference(features, groups), rtol=1e-5, atol=1e-3)


def test_product_context_single_image_product_has_zero_difference():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]], dtype=np.float32)
    got = with_product_context(x, [5, 9, 9])
    np.testing.assert_array_equal(got[:, :2], x)
    np.testing.assert_allclose(got[0, 2:], [0, 0])
    np.testing.assert_allclose(got[1, 2:], [-1, -2])
    np.testing.assert_allclose(got[2, 2:], [1, 2])


# ---- restrict_labels ---------------------------------------------------------------------


def test_restrict_labels_recomputes_other():
    # 3 labels + the "other" slot
    emb = np.array([
        [1, 0, 0, 0],  # label 0 only
        [0, 0, 1, 0],  # label 2 only: loses its label when 2 is dropped -> other
        [1, 0, 1, 0],  # labels 0 and 2
        [0, 0, 0, 1],  # was other: stays other
    ], dtype=np.float32)
    got = restrict_labels(emb, np.array([0, 1]))
    np.testing.assert_array_equal(got, [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    assert got.dtype == emb.dtype
    np.testing.assert_array_equal(restrict_labels(emb, np.array([2])), [[0, 1], [1, 0], [1, 0], [0, 1]])
    # keeping every label reproduces the original embedding
    np.testing.assert_array_equal(restrict_labels(emb, np.arange(3)), emb)


def test_restrict_labels_on_candidate_batches_and_select_labels():
    # (N=1 image, M=3 candidate slots, K=2 labels + other); the third slot is padding
    cand = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=np.float32)
    mask = np.array([[True, True, False]])
    got = restrict_labels(cand, np.array([1]))
    np.testing.assert_array_equal(got, [[[0, 1], [1, 0], [0, 1]]])  # padding looks like "other"
    data = LabelledImages(np.zeros((1, 4), np.float32), np.array([[1, 0, 0]], np.float32), cand,
                          mask, np.array([0]))
    sel = data.select_labels(np.array([1]))
    # ... but select_labels zeroes the padded slot again, so it cannot be chosen as "other"
    np.testing.assert_array_equal(sel.candidates, [[[0, 1], [1, 0], [0, 0]]])
    np.testing.assert_array_equal(sel.targets, [[0, 1]])
    np.testing.assert_array_equal(sel.candidate_mask, mask)


# ---- fit_head on a separable toy problem -------------------------------------------------

N_LABELS = 3


def toy_data(n_products: int, seed: int, spread: float = 0.4) -> LabelledImages:
    """Products of 2-3 colours, one image per colour; features from 3 Gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = np.eye(N_LABELS, 6, dtype=np.float32) * 3.0
    width = N_LABELS + 1  # labels + "other"
    x, y, cand, mask, true = [], [], [], [], []
    for _ in range(n_products):
        k = rng.integers(2, N_LABELS + 1)
        tags = rng.permutation(N_LABELS)[:k]
        padded = np.zeros((N_LABELS, width), np.float32)
        padded[np.arange(k), tags] = 1.0
        valid = np.arange(N_LABELS) < k
        for t_index, label in enumerate(tags):
            x.append(centres[label] + rng.normal(0, spread, 6).astype(np.float32))
            y.append(padded[t_index])
            cand.append(padded)
            mask.append(valid)
            true.append(t_index)
    return LabelledImages(np.stack(x), np.stack(y), np.stack(cand), np.stack(mask), np.array(true))


def pairing_accuracy(head, data: LabelledImages) -> float:
    z = torch.from_numpy(head.logits(data.features))
    costs = tag_costs(z, torch.from_numpy(data.candidates), "bce")
    costs = costs.masked_fill(~torch.from_numpy(data.candidate_mask), float("inf"))
    return float((costs.argmin(dim=1).numpy() == data.true_index).mean())


FAST = {"hidden": 16, "batch_size": 32, "lr": 1e-2}


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_fit_head_learns_a_separable_problem(loss):
    train = toy_data(40, seed=1)
    result = fit_head(train, None, loss=loss, max_epochs=40, seed=0, **FAST)
    assert pairing_accuracy(result.head, train) >= 0.95
    assert pairing_accuracy(result.head, toy_data(20, seed=2)) >= 0.9  # and generalises
    assert not result.head.training
    # without validation data: every epoch runs and the last one is kept
    assert result.epochs == result.best_epoch == 40
    assert len(result.train_loss) == 40 and result.val_loss == []
    assert result.train_loss[-1] < result.train_loss[0]


def selection_key(result, epoch: int) -> tuple[float, ...]:
    """What fit_head maximises when it picks the epoch to keep.

    Its docstring: the share of validation images that rank their true tag first, ties broken by
    the lower validation loss (without a recorded top-1 curve: the validation loss alone).
    """
    top1 = getattr(result, "val_top1", None)
    loss = -result.val_loss[epoch - 1]
    return (top1[epoch - 1], loss) if top1 else (loss,)


def check_kept_epoch(result) -> None:
    assert 1 <= result.best_epoch <= result.epochs
    assert len(result.val_loss) == len(result.train_loss) == result.epochs
    keys = [selection_key(result, e) for e in range(1, result.epochs + 1)]
    # the first epoch that reaches the best value (a later epoch must be strictly better)
    assert result.best_epoch == 1 + keys.index(max(keys))


def weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_head_keeps_the_best_validation_epoch():
    train = toy_data(12, seed=3, spread=1.5)
    val = toy_data(12, seed=4, spread=1.5)
    kwargs = {"hidden": 64, "lr": 3e-2, "dropout": 0.0, "batch_size": 8, "seed": 0}
    result = fit_head(train, val, max_epochs=80, patience=5, **kwargs)
    assert result.epochs <= 80
    check_kept_epoch(result)
    assert min(result.val_loss) > 0.0 and all(np.isfinite(result.val_loss))
    # the returned weights are those after exactly best_epoch epochs, not the last epoch's:
    # training again for best_epoch epochs without validation retraces the same steps
    replay = fit_head(train, None, max_epochs=result.best_epoch, **kwargs)
    assert weights_equal(result.head, replay.head)
    assert replay.train_loss == result.train_loss[: result.best_epoch]
    if result.best_epoch < result.epochs:
        last = fit_head(train, None, max_epochs=result.epochs, **kwargs)
        assert not weights_equal(result.head, last.head)


def test_fit_head_stops_early_when_validation_gets_worse():
    # tiny noisy training set, big head, high lr: validation soon stops improving
    train = toy_data(4, seed=5, spread=2.5)
    val = toy_data(20, seed=6, spread=2.5)
    result = fit_head(train, val, max_epochs=200, patience=4, hidden=128, lr=5e-2, dropout=0.0,
                      batch_size=4, seed=0)
    assert result.epochs < 200
    assert result.epochs - result.best_epoch == 4  # exactly `patience` epochs without a better one
    check_kept_epoch(result)


def test_fit_head_is_deterministic_for_a_seed():
    train, val = toy_data(15, seed=7), toy_data(5, seed=8)
    kwargs = {"max_epochs": 8, "patience": 100, **FAST}
    a = fit_head(train, val, seed=3, **kwargs)
    b = fit_head(train, val, seed=3, **kwargs)
    c = fit_head(train, val, seed=4, **kwargs)
    sa, sb, sc = a.head.state_dict(), b.head.state_dict(), c.head.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fit_head_needs_training_rows():
    empty = toy_data(3, seed=0).subset(np.array([], dtype=np.int64))
    with pytest.raises(ValueError):
        fit_head(empty, None)
