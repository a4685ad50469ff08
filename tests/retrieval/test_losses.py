import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.distances import pairwise_sq_dist
from emit.retrieval.losses.batch import LossBatch
from emit.retrieval.losses.infonce import infonce_loss
from emit.retrieval.losses.l2 import l2_loss
from emit.retrieval.losses.patr import patr_loss
from emit.retrieval.losses.registry import LOSSES, get_loss, list_losses
from emit.retrieval.losses.triplet import triplet_loss
from emit.retrieval.losses.vse import vse_loss
from emit.retrieval.metric import METRICS

# ---- slow references: plain Python floats, one pair at a time ----


def sq(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def cos(a, b):
    na = max(math.sqrt(sum(x * x for x in a)), 1e-12)
    nb = max(math.sqrt(sum(x * x for x in b)), 1e-12)
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def reduce(per, reduction):
    return {"mean": sum(per) / len(per), "sum": sum(per), "none": per}[reduction]


def slow_patr(t, p, n, valid, margin):
    out = []
    for i in range(len(t)):
        loss = sq(t[i], p[i])
        for k in range(len(n[i])):
            if valid[i][k]:
                loss += max(0.0, margin - sq(t[i], n[i][k]))
        out.append(loss)
    return out


def slow_triplet(t, p, n, valid, margin):
    out = []
    for i in range(len(t)):
        loss = 0.0
        for k in range(len(n[i])):
            if valid[i][k]:
                loss += max(0.0, margin + sq(t[i], p[i]) - sq(t[i], n[i][k]))
        out.append(loss)
    return out


def slow_vse(t, v, ids, margin, metric):
    def s(i, j):
        return cos(t[i], v[j]) if metric == "ip" else -sq(t[i], v[j])

    out = []
    for i in range(len(t)):
        negs = [j for j in range(len(t)) if ids[j] != ids[i]]
        loss = 0.0
        if negs:
            loss += max(0.0, margin - s(i, i) + max(s(i, j) for j in negs))  # text i vs images
            loss += max(0.0, margin - s(i, i) + max(s(j, i) for j in negs))  # image i vs texts
        out.append(loss)
    return out


def slow_infonce(t, v, ids, tau, text_ids=None):
    text_ids = list(range(len(t))) if text_ids is None else text_ids
    out = []
    for i in range(len(t)):
        keep = [j for j in range(len(t)) if j == i or (ids[j] != ids[i] and text_ids[j] != text_ids[i])]
        row = [cos(t[i], v[j]) / tau for j in keep]
        col = [cos(t[j], v[i]) / tau for j in keep]
        own = cos(t[i], v[i]) / tau
        t2i = math.log(sum(math.exp(x) for x in row)) - own
        i2t = math.log(sum(math.exp(x) for x in col)) - own
        out.append((t2i + i2t) / 2)
    return out


def check(got, want, reduction, tol=1e-9):
    np.testing.assert_allclose(got.detach().numpy(), np.asarray(want), rtol=tol, atol=tol)
    assert got.shape == (() if reduction != "none" else (len(want),))


values = st.floats(-3, 3, allow_nan=False)
reductions = st.sampled_from(["mean", "sum", "none"])


@st.composite
def anchor_batches(draw):
    b, n, d = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    t = draw(arrays(np.float64, (b, d), elements=values))
    p = draw(arrays(np.float64, (b, d), elements=values))
    neg = draw(arrays(np.float64, (b, n, d), elements=values))
    valid = draw(arrays(np.bool_, (b, n)))
    return t, p, neg, valid


@st.composite
def pair_batches(draw):
    b, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    t = draw(arrays(np.float64, (b, d), elements=values))
    v = draw(arrays(np.float64, (b, d), elements=values))
    ids = draw(arrays(np.int64, (b,), elements=st.integers(0, 2)))  # small range: shared images
    return t, v, ids


# ---- distances ----


@st.composite
def point_sets(draw):
    n, m, d = draw(st.integers(1, 5)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    big = st.floats(-100, 100)
    return draw(arrays(np.float64, (n, d), elements=big)), draw(arrays(np.float64, (m, d), elements=big))


@settings(max_examples=60, deadline=None)
@given(point_sets())
def test_pairwise_sq_dist_matches_loop(ab):
    a, b = ab
    got = pairwise_sq_dist(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([[sq(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-5)
    assert (got >= 0).all()


def test_pairwise_sq_dist_far_from_origin_float32():
    # Post-ReLU features: large common offset, small spread. The plain expansion loses it.
    g = torch.Generator().manual_seed(0)
    a = 1000.0 + torch.rand(6, 8, generator=g, dtype=torch.float64) * 1e-2
    b = 1000.0 + torch.rand(5, 8, generator=g, dtype=torch.float64) * 1e-2
    want = ((a[:, None] - b[None]) ** 2).sum(-1)
    got = pairwise_sq_dist(a.float(), b.float()).double()
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    same = pairwise_sq_dist(a.float(), a.float()).diagonal()
    assert (same >= 0).all() and same.max() < 1e-5


def test_pairwise_sq_dist_gradient_and_shapes():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pairwise_sq_dist, (a, b))
    assert pairwise_sq_dist(torch.zeros(0, 4), torch.zeros(2, 4)).shape == (0, 2)
    with pytest.raises(ValueError):
        pairwise_sq_dist(torch.zeros(2, 3), torch.zeros(2, 4))


# ---- each loss against its loop ----


@settings(max_examples=80, deadline=None)
@given(anchor_batches(), st.floats(0, 5), reductions, st.booleans())
def test_patr_matches_reference(batch, margin, reduction, use_mask):
    t, p, neg, valid = batch
    if not use_mask:
        valid = np.ones_like(valid)
    got = patr_loss(*map(torch.from_numpy, (t, p, neg)), margin=margin,
                    mask=torch.from_numpy(valid) if use_mask else None, reduction=reduction)
    want = slow_patr(t.tolist(), p.tolist(), neg.tolist(), valid.tolist(), margin)
    check(got, reduce(want, reduction), reduction)


@settings(max_examples=80, deadline=None)
@given(anchor_batches(), st.floats(0, 5), reductions, st.booleans())
def test_triplet_matches_reference(batch, margin, reduction, use_mask):
    t, p, neg, valid = batch
    if not use_mask:
        valid = np.ones_like(valid)
    got = triplet_loss(*map(torch.from_numpy, (t, p, neg)), margin=margin,
                       mask=torch.from_numpy(valid) if use_mask else None, reduction=reduction)
    want = slow_triplet(t.tolist(), p.tolist(), neg.tolist(), valid.tolist(), margin)
    check(got, reduce(want, reduction), reduction)


@settings(max_examples=40, deadline=None)
@given(anchor_batches(), reductions)
def test_l2_matches_reference(batch, reduction):
    t, p, _, _ = batch
    got = l2_loss(torch.from_numpy(t), torch.from_numpy(p), reduction=reduction)
    check(got, reduce([sq(x, y) for x, y in zip(t.tolist(), p.tolist(), strict=True)], reduction), reduction)


@settings(max_examples=80, deadline=None)
@given(pair_batches(), st.floats(0, 2), st.sampled_from(["ip", "l2"]), reductions, st.booleans())
def test_vse_matches_reference(batch, margin, metric, reduction, use_ids):
    t, v, ids = batch
    if not use_ids:
        ids = np.arange(len(t))
    got = vse_loss(torch.from_numpy(t), torch.from_numpy(v), torch.from_numpy(ids) if use_ids else None,
                   margin=margin, metric=metric, reduction=reduction)
    want = slow_vse(t.tolist(), v.tolist(), ids.tolist(), margin, metric)
    check(got, reduce(want, reduction), reduction, tol=1e-7)


@settings(max_examples=80, deadline=None)
@given(pair_batches(), st.floats(0.05, 2), reductions, st.booleans(), st.data())
def test_infonce_matches_reference(batch, tau, reduction, use_ids, data):
    t, v, ids = batch
    if not use_ids:
        ids = np.arange(len(t))
    text_ids = data.draw(st.none() | arrays(np.int64, (len(t),), elements=st.integers(0, 2)))
    got = infonce_loss(torch.from_numpy(t), torch.from_numpy(v), torch.from_numpy(ids) if use_ids else None,
                       temperature=tau, reduction=reduction,
                       text_ids=None if text_ids is None else torch.from_numpy(text_ids))
    want = slow_infonce(t.tolist(), v.tolist(), ids.tolist(), tau,
                        None if text_ids is None else text_ids.tolist())
    check(got, reduce(want, reduction), reduction, tol=1e-7)


# ---- edge cases ----


def test_single_negative_form_is_eq1():
    g = torch.Generator().manual_seed(1)
    t, p, n = (torch.randn(4, 3, generator=g) for _ in range(3))
    for loss in (patr_loss, triplet_loss):
        torch.testing.assert_close(loss(t, p, n, 2.0), loss(t, p, n.unsqueeze(1), 2.0))
    # eq. (1) by hand
    want = ((t - p) ** 2).sum(1) + (2.0 - ((t - n) ** 2).sum(1)).clamp_min(0)
    torch.testing.assert_close(patr_loss(t, p, n, 2.0, reduction="none"), want)


def test_masked_negatives_are_ignored_even_if_garbage():
    t, p = torch.zeros(2, 2), torch.ones(2, 2)
    neg = torch.full((2, 2, 2), float("inf"))
    mask = torch.zeros(2, 2, dtype=torch.bool)
    torch.testing.assert_close(patr_loss(t, p, neg, 1.0, mask, reduction="none"), torch.full((2,), 2.0))
    torch.testing.assert_close(triplet_loss(t, p, neg, 1.0, mask), torch.tensor(0.0))


def test_bad_arguments():
    t = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        patr_loss(t, t, torch.zeros(2, 2, 4))
    with pytest.raises(ValueError):
        triplet_loss(t, t, torch.zeros(2, 1, 3), mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        patr_loss(t, t, t, margin=-1.0)
    with pytest.raises(ValueError):
        l2_loss(t, t, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vse_loss(t, t, metric="dot")
    with pytest.raises(ValueError):
        vse_loss(t, t, image_ids=[0, 1, 2])
    with pytest.raises(ValueError):
        infonce_loss(t, t, temperature=0.0)


def _batch(text, image, margin=1.0, negatives=None):
    """A LossBatch of distinct images and texts; ``negatives`` (B, N, D) all valid."""
    b = len(text)
    tokens = [[f"w{i}"] for i in range(b)]
    batch = LossBatch(text, image, torch.arange(b), tokens, torch.ones(b), margin, 0.07)
    if negatives is not None:
        batch = replace(batch, negatives=negatives, valid=torch.ones(negatives.shape[:2], dtype=torch.bool))
    return batch


def test_registry():
    assert set(LOSSES) == {"patr", "triplet", "l2", "vse", "infonce"} and list_losses() == list(LOSSES)
    assert {"patr", "triplet"} == {name for name in list_losses() if get_loss(name).needs_negatives}
    t = torch.randn(3, 2)
    assert get_loss("l2")(_batch(t, t), RetrievalConfig(loss="l2")).sum().item() == 0.0
    with pytest.raises(EmitError, match="unknown loss 'hinge'"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="needs mined negatives"):
        get_loss("patr")(_batch(t, t), RetrievalConfig(loss="patr"))


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_follows_the_one_calling_convention(name):
    spec = get_loss(name)
    assert spec.name == name and spec.metric in METRICS and spec.help
    assert RetrievalConfig(loss=name).metric == spec.metric
    g = torch.Generator().manual_seed(2)
    text, image = torch.randn(5, 3, generator=g, requires_grad=True), torch.randn(5, 3, generator=g)
    neg = image[(torch.arange(5) + 1) % 5].unsqueeze(1) if spec.needs_negatives else None
    per = spec(_batch(text, image, 2.0, neg), RetrievalConfig(loss=name))
    assert per.shape == (5,) and torch.isfinite(per).all()
    per.sum().backward()
    assert text.grad is not None and torch.isfinite(text.grad).all()


# ---- multi-positive handling ----


def _two_captions_one_image():
    # Texts 0 and 1 caption image A (same features twice), text 2 captions image B.
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    return torch.stack([a, a, b]), torch.stack([a, a, b]), torch.tensor([7, 7, 9])


def test_vse_same_image_captions_are_not_negatives():
    text, image, ids = _two_captions_one_image()
    assert vse_loss(text, image, ids, margin=0.2).item() == 0.0  # cos 1 vs 0: margin satisfied
    # Without ids, caption 1's copy of image A is text 0's "hardest negative": margin 0.2 violated.
    torch.testing.assert_close(vse_loss(text, image, margin=0.2, reduction="none"),
                               torch.tensor([0.4, 0.4, 0.0]))
    # String ids work too.
    assert vse_loss(text, image, ["a", "a", "b"], margin=0.2).item() == 0.0


def test_vse_batch_of_one_image_has_no_negatives():
    text = torch.randn(3, 4, requires_grad=True)
    loss = vse_loss(text, torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(text.grad).all()


def test_infonce_same_image_captions_are_not_negatives():
    text, image, ids = _two_captions_one_image()
    tau = 0.5
    per = infonce_loss(text, image, ids, tau, reduction="none")
    # Pair 0 competes only with image/text B (cos 0), never with its twin (cos 1).
    want = math.log(math.exp(1 / tau) + math.exp(0.0)) - 1 / tau
    torch.testing.assert_close(per[0], torch.tensor(want))
    unmasked = infonce_loss(text, image, None, tau, reduction="none")
    assert (per[:2] < unmasked[:2]).all()  # the twin hurts when it is a negative
    torch.testing.assert_close(per[2], unmasked[2])  # pair 2 has no twin
    # The masked twin gets no gradient: moving image 1 does not change pair 0's loss.
    image1 = image.clone().requires_grad_(True)
    infonce_loss(text, image1, ids, tau, reduction="none")[0].backward()
    assert image1.grad[1].abs().max() == 0.0 and image1.grad[0].abs().max() > 0.0


# ---- gradient behaviour ----


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 4, generator=g)
    words = torch.randn(8, 6, generator=g)  # a "text encoder" input per pair
    return words, images


@pytest.mark.parametrize("name", list_losses())
def test_sgd_steps_reduce_the_loss(name):
    words, images = _toy_problem()
    proj = torch.nn.Linear(6, 4)
    torch.nn.init.zeros_(proj.bias)
    opt = torch.optim.SGD(proj.parameters(), lr=0.02)
    b = len(images)
    neg = images[(torch.arange(b) + 1) % b].unsqueeze(1)  # next pair's image as the negative
    spec, config = get_loss(name), RetrievalConfig(loss=name)

    def loss_now():  # through the registry's one convention; distinct images and texts
        return spec(_batch(proj(words), images, 2.0, neg if spec.needs_negatives else None), config).mean()

    first = loss_now().item()
    for _ in range(10):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    assert loss_now().item() < first


def test_patr_pulls_positive_to_zero_triplet_stops_at_margin():
    # Margin already satisfied: s_p = 1, s_n = 16 > s_p + margin.
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[-4.0, 0.0]])
    results = {}
    for name, loss_fn in (("patr", patr_loss), ("triplet", triplet_loss)):
        text = torch.zeros(1, 2, requires_grad=True)
        opt = torch.optim.SGD([text], lr=0.1)
        for _ in range(50):
            opt.zero_grad()
            loss_fn(text, pos, neg, 2.0).backward()
            opt.step()
        results[name] = ((text - pos) ** 2).sum().item()
    assert results["triplet"] == 1.0  # zero gradient: the text never moved
    assert results["patr"] < 1e-3  # PATR keeps pulling s_p towards 0
