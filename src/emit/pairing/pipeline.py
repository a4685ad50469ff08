"""Train and apply pairing models on products: reader -> features -> heads -> decisions."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import softmax

from emit.config import PairingConfig
from emit.data.products import Product
from emit.devices import resolve_device
from emit.pairing.assign import AssignMode, assign
from emit.pairing.confidence import Calibration, fit_calibration
from emit.pairing.cost import cost_matrix
from emit.pairing.ensemble import CombineMode
from emit.pairing.model import Member, PairingModel, colour_one_hot, head_inputs
from emit.pairing.projection import fit_projection
from emit.pairing.tagger import FitResult, LabelledImages, fit_head
from emit.problems import EmitError, ProblemLog
from emit.split import hash_fraction, in_validation
from emit.text.labels import build_vocab
from emit.vision.backbones import Backbone, create_backbone
from emit.vision.features import extract_features

log = logging.getLogger("emit")


@dataclass
class ProductFeatures:
    """Backbone features of every readable image, with where each product's images are."""

    products: list[Product]
    features: np.ndarray  # (N, D) rows of readable images only
    groups: np.ndarray  # (N,) index of the row's product in ``products``
    rows: list[list[int | None]]  # per product, per image: row index, or None if unreadable


def extract_product_features(
    products: Sequence[Product], backbone: Backbone, *, cache_dir: str | os.PathLike[str] | None,
    hflip_tta: bool, problems: ProblemLog, progress: bool = True, batch_size: int = 32,
    device: str | None = "cpu",
) -> ProductFeatures:
    paths, names, owner = [], [], []
    slots: list[list[int | None]] = []  # per product, per image: its index in paths
    for k, product in enumerate(products):
        slot: list[int | None] = []
        for name in product.images:
            if name in product.missing:  # already reported by the reader; it stays untagged ("")
                slot.append(None)
                continue
            slot.append(len(paths))
            paths.append(product.image_path(name))
            names.append(f"{product.product_id} image {name}")
            owner.append(k)
        slots.append(slot)
    feats, ok = extract_features(paths, backbone, cache_dir=cache_dir, batch_size=batch_size,
                                 problems=problems, progress=progress, hflip_tta=hflip_tta,
                                 record_names=names, device=device)
    keep = np.flatnonzero(ok)
    new_index = np.full(len(paths), -1)
    new_index[keep] = np.arange(len(keep))
    rows = [[None if j is None or new_index[j] < 0 else int(new_index[j]) for j in slot] for slot in slots]
    return ProductFeatures(list(products), feats[keep], np.asarray(owner, dtype=np.int64)[keep], rows)


def labelled_rows(pf: ProductFeatures, inputs: np.ndarray,
                  encode: Callable[[Sequence[str]], np.ndarray]) -> tuple[LabelledImages, np.ndarray]:
    """Training rows for every readable image with a known tag, and each row's product id."""
    width = encode(["x"]).shape[1]
    most = max((len(p.optional_tags) for p in pf.products), default=1)
    x, y, cand, mask, true, pids = [], [], [], [], [], []
    for product, rows in zip(pf.products, pf.rows, strict=True):
        tag_emb = encode(product.optional_tags)
        padded = np.zeros((most, width), dtype=np.float32)
        padded[: len(tag_emb)] = tag_emb
        valid = np.arange(most) < len(tag_emb)
        for row, tag in zip(rows, product.tags, strict=True):
            if row is None or tag is None:
                continue
            t = product.optional_tags.index(tag)
            x.append(inputs[row])
            y.append(tag_emb[t])
            cand.append(padded)
            mask.append(valid)
            true.append(t)
            pids.append(product.product_id)
    if not x:
        raise EmitError("no training images with a known tag could be read; check the data folder "
                        "has images and imgs_tags filled in")
    data = LabelledImages(np.stack(x), np.stack(y), np.stack(cand), np.stack(mask), np.asarray(true))
    return data, np.asarray(pids)


def _fit(config: PairingConfig, data: LabelledImages, pids: np.ndarray, seed: int, *,
         loss: str, listwise_weight: float, data_fraction: float, device: str | None = "cpu") -> FitResult:
    """Hold out products (by hash) for early stopping, subsample the rest, and fit a head."""
    is_val = np.array([in_validation(p, config.val_fraction, seed) for p in pids], dtype=bool)
    if is_val.all():
        # Too few products for a hold-out (it is drawn by hash): train on all, no early stopping.
        log.warning("all %d training products fell in the validation hold-out; training on all "
                    "of them for max_epochs without early stopping", len(np.unique(pids)))
        is_val[:] = False
    rng = np.random.default_rng(seed)
    train_products = np.unique(pids[~is_val])
    if data_fraction < 1:
        take = max(1, math.ceil(data_fraction * len(train_products)))
        train_products = rng.choice(train_products, size=take, replace=False)
    train_rows = np.flatnonzero(np.isin(pids, train_products) & ~is_val)
    val_rows = np.flatnonzero(is_val)
    return fit_head(
        data.subset(train_rows), data.subset(val_rows) if len(val_rows) else None,
        loss=loss, hidden=config.hidden, dropout=config.dropout, lr=config.lr,  # type: ignore[arg-type]
        batch_size=config.batch_size, weight_decay=config.weight_decay,
        max_epochs=config.max_epochs, patience=config.patience,
        listwise_weight=listwise_weight, seed=seed, device=resolve_device(device),
    )


def train_pairing(
    products: Sequence[Product], config: PairingConfig, *, backbone: Backbone | None = None,
    cache_dir: str | os.PathLike[str] | None = None, problems: ProblemLog | None = None,
    progress: bool = True, features: ProductFeatures | None = None, device: str | None = "cpu",
    extra: Sequence[Product] = (),
) -> PairingModel:
    """Learn the label vocabulary, the bag of tagger heads and the colour baseline. ``device`` is
    where the backbone extracts features and the heads train.

    ``extra`` are more labelled catalogue products (:mod:`emit.data.extra_images`): they train
    the vocabulary and the heads like the others, but the confidence is calibrated on the
    products being paired only. ``features``, if given, covers ``products`` then ``extra``."""
    config.validate()
    problems = problems if problems is not None else ProblemLog()
    products = [p for p in products if p.labelled]
    if not products:
        raise EmitError("no product has tagged images; training needs imgs_tags filled in")
    primary = {p.product_id for p in products}
    products = products + [p for p in extra if p.labelled and p.product_id not in primary]
    backbone = backbone or create_backbone(config.backbone, weights=config.weights)
    vocab = build_vocab([t for p in products for t in p.optional_tags],
                        config.min_count, config.top_k)
    if not vocab.labels:
        raise EmitError(f"no label occurs {config.min_count} times in the training tags; "
                        "lower --min-count or train on more products")
    pf = features or extract_product_features(products, backbone, cache_dir=cache_dir,
                                              hflip_tta=config.hflip_tta, problems=problems,
                                              progress=progress, device=device)
    projection = fit_projection(pf.features, backbone.segments, config.cnn_components)
    features = projection.apply(pf.features) if projection is not None else pf.features
    inputs = head_inputs(config, features, pf.groups)
    data, pids = labelled_rows(pf, inputs, vocab.encode_many)

    members = train_bag(config, data, pids, len(vocab.labels), device=device)

    baseline_data, _ = labelled_rows(pf, inputs, colour_one_hot)
    baseline = _fit(config, baseline_data, pids, config.seed, loss="softmax", listwise_weight=0.0,
                    data_fraction=1.0, device=device).head
    model = PairingModel(config, vocab, members, baseline, backbone.identity, backbone.dim,
                         projection=projection)
    if config.calibration_folds > 1:
        model.calibration = calibrate_crossfit(model, pf, inputs, data, pids, primary, device=device)
    else:
        model.calibration = calibrate(model, pf, inputs, primary)
    log.info("confidence calibration: slope %.3f, intercept %.3f, on %d held-out products",
             model.calibration.slope, model.calibration.intercept, model.calibration.products)
    return model


def train_bag(config: PairingConfig, data: LabelledImages, pids: np.ndarray, n_labels: int, *,
              device: str | None = "cpu", quiet: bool = False) -> list[Member]:
    """The bagged heads: each its own seed, label subset, training products and hold-out."""
    members: list[Member] = []
    for k in range(config.bag_size):
        seed = config.seed + k
        rng = np.random.default_rng(seed + 10_000)
        if config.bag_size > 1 and config.bag_label_fraction < 1:
            take = max(1, math.ceil(config.bag_label_fraction * n_labels))
            label_ids = np.sort(rng.choice(n_labels, size=take, replace=False))
        else:
            label_ids = np.arange(n_labels)
        fraction = config.bag_data_fraction if config.bag_size > 1 else 1.0
        result = _fit(config, data.select_labels(label_ids), pids, seed, loss=config.loss,
                      listwise_weight=config.listwise_weight, data_fraction=fraction, device=device)
        if not quiet:
            log.info("member %d: %d labels, best epoch %d of %d", k, len(label_ids),
                     result.best_epoch, result.epochs)
        members.append(Member(label_ids, result.head, seed, _curves(result)))
    return members


def calibrate_crossfit(model: PairingModel, pf: ProductFeatures, inputs: np.ndarray,
                       data: LabelledImages, pids: np.ndarray, among: set[str], *,
                       device: str | None = "cpu") -> Calibration:
    """Platt scaling fitted on out-of-fold *bags*: the paired products are cut into
    ``calibration_folds`` parts by hash; for each, a whole bag is trained on the rest and decides
    the part's products as the final model would (mean cost, same assignment). This sees what
    the model's margins mean for the bag, which is more often right than one member at the same
    margin (the member-level fit is under-confident); it costs that many more bags."""
    config = model.config
    folds = config.calibration_folds
    fold = {pid: min(int(hash_fraction(pid, config.seed + 7) * folds), folds - 1) for pid in among}
    row_fold = np.array([fold.get(pid, -1) for pid in pids])
    margins: list[float] = []
    correct: list[bool] = []
    for f in range(folds):
        keep = np.flatnonzero(row_fold != f)
        held = [k for k, p in enumerate(pf.products) if fold.get(p.product_id) == f]
        if not held or len(keep) == 0:
            continue
        bag = train_bag(config, data.subset(keep), pids[keep], len(model.vocab.labels), device=device,
                        quiet=True)
        fold_model = PairingModel(config, model.vocab, bag, None, model.backbone_identity,
                                  model.feature_dim, projection=model.projection)
        logits = fold_model.member_logits(inputs)  # all images at once, as predict_pairing does
        for k in held:
            product, rows = pf.products[k], pf.rows[k]
            if not _all_readable(rows):
                continue
            choice, cost = fold_model.decide([z[rows] for z in logits], product.optional_tags)
            right = _all_right(product, choice)
            if right is not None:
                margins.append(model.margin(cost, choice))
                correct.append(right)
    return fit_calibration(margins, correct)


def _all_readable(rows: Sequence[int | None]) -> bool:
    return bool(rows) and all(r is not None for r in rows)


def _all_right(product: Product, choice: np.ndarray) -> bool | None:
    """Whether every image with a known tag got it; None when no image's tag is known."""
    truth = [product.optional_tags.index(t) if t else None for t in product.tags]
    if all(t is None for t in truth):
        return None
    return all(t is None or t == c for t, c in zip(truth, choice, strict=True))


def calibrate(model: PairingModel, pf: ProductFeatures, inputs: np.ndarray,
              among: set[str] | None = None) -> Calibration:
    """Platt scaling of the cost margin, fitted on the products each member held out for early
    stopping and scored by that member alone: training data only, never seen by the scorer.
    ``among`` limits it to those product ids (the products being paired, not extra images)."""
    config = model.config
    margins: list[float] = []
    correct: list[bool] = []
    mode: AssignMode = "argmin" if config.bag_combine == "vote" else config.assign
    for member in model.members:
        logits = member.head.logits(inputs)  # all images at once, as predict_pairing does
        for product, rows in zip(pf.products, pf.rows, strict=True):
            if among is not None and product.product_id not in among:
                continue
            if not (in_validation(product.product_id, config.val_fraction, member.seed)
                    and _all_readable(rows)):
                continue
            cost = cost_matrix(logits[rows], member.embed(model.vocab, product.optional_tags), config.loss)
            choice = assign(cost, mode)
            right = _all_right(product, choice)
            if right is not None:
                margins.append(model.margin(cost, choice))
                correct.append(right)
    return fit_calibration(margins, correct)


def _curves(result: FitResult) -> dict:
    return {"epochs": result.epochs, "best_epoch": result.best_epoch,
            "train_loss": [round(v, 5) for v in result.train_loss],
            "val_loss": [round(v, 5) for v in result.val_loss],
            "val_top1": [round(v, 4) for v in result.val_top1]}


@dataclass
class ProductDecision:
    product_id: str
    tags: list[str | None]  # None for an unreadable image
    confidence: list[float | None]  # softmax over the product's tags of the chosen tag
    cost: np.ndarray  # (readable images, tags) mean cost over the bag
    baseline_tags: list[str | None] = field(default_factory=list)
    # calibrated probability that every image is right (0 with an unreadable image: it stays untagged)
    product_confidence: float = 0.0


def predict_pairing(
    model: PairingModel, pf: ProductFeatures, *, assign_mode: AssignMode | None = None,
    combine_mode: CombineMode | None = None, baseline: bool = True,
) -> list[ProductDecision]:
    """Decide every product. All heads run once over all images; products are then solved one by one."""
    inputs = model.inputs(pf.features, pf.groups)
    logits = model.member_logits(inputs)
    base_logits = model.baseline.logits(inputs) if (baseline and model.baseline is not None) else None
    scale = model.cost_temperature
    out: list[ProductDecision] = []
    for product, rows in zip(pf.products, pf.rows, strict=True):
        readable = [r for r in rows if r is not None]
        tags: list[str | None] = [None] * len(rows)
        conf: list[float | None] = [None] * len(rows)
        base: list[str | None] = [None] * len(rows)
        cost = np.zeros((0, len(product.optional_tags)))
        sure = 0.0
        if readable:
            choice, cost = model.decide([z[readable] for z in logits], product.optional_tags,
                                        assign_mode, combine_mode)
            prob = softmax(-cost / scale, axis=1)
            base_choice = (model.baseline_decide(base_logits[readable], product.optional_tags,
                                                 assign_mode) if base_logits is not None else None)
            slots = [i for i, r in enumerate(rows) if r is not None]
            for j, i in enumerate(slots):
                tags[i] = product.optional_tags[choice[j]]
                conf[i] = float(prob[j, choice[j]])
                if base_choice is not None:
                    base[i] = product.optional_tags[base_choice[j]]
            if len(readable) == len(rows):
                sure = model.product_confidence(cost, choice, assign_mode, combine_mode)
        out.append(ProductDecision(product.product_id, tags, conf, cost, base, sure))
    return out


def predict_products(
    model: PairingModel, backbone: Backbone, products: Sequence[Product], *,
    cache_dir: str | os.PathLike[str] | None, problems: ProblemLog, progress: bool = True,
    assign_mode: AssignMode | None = None, combine_mode: CombineMode | None = None,
    device: str | None = "cpu",
) -> list[ProductDecision]:
    """Features of the products' images (through the cache), then every product's decision."""
    pf = extract_product_features(products, backbone, cache_dir=cache_dir, hflip_tta=model.config.hflip_tta,
                                  problems=problems, progress=progress, device=device)
    return predict_pairing(model, pf, assign_mode=assign_mode, combine_mode=combine_mode)


def check_backbone(model: PairingModel, backbone: Backbone) -> None:
    """Refuse features from a different backbone than the model was trained on."""
    if backbone.identity != model.backbone_identity:
        raise EmitError(
            f"the backbone {backbone.name!r} (weights {backbone.identity.get('weights')}) differs from "
            f"the one the model was trained with ({model.backbone_identity.get('name')!r}, weights "
            f"{model.backbone_identity.get('weights')}); use the same --weights or retrain")
