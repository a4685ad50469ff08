"""Train a text encoder into a frozen CNN's image-feature space (Aggarwal et al. 2019): the loop.

The data are :class:`~emit.retrieval.pairs.Pairs` of texts and rows of a precomputed image
feature matrix; the model is :class:`~emit.retrieval.model.RetrievalModel`. The loop is built
from pieces that a benchmark, a distributed wrapper or a job runner can call on their own:

* :func:`prepare_tasks` -- each task's pairs, tokens and weights, once per run;
* :func:`new_state` -- a :class:`TrainState`: the modules, the optimiser, the margin, the
  history and the best epoch so far;
* :func:`train_step` -- one optimiser step on one batch of each task;
* :func:`train_one_epoch` -- one epoch of steps over precomputed (normalised) image features;
* :func:`train_retrieval` -- the whole run, from raw features to a saved, resumable folder.

One training step (``tasks='multitask'``) takes one batch of titles and one batch of queries,
computes each task's loss on its own batch, and minimises their mean (the paper's eq. 4). An
epoch is one pass over the larger task; the smaller one cycles, reshuffled on every pass. With
``tasks='titles'`` or ``'clicks'`` only that task is used.

Every loss is called the same way (:mod:`emit.retrieval.losses.registry`). For PATR and
triplet, each anchor's negatives are mined inside its batch (:mod:`emit.retrieval.mining`): the
nearest images of other pairs, never an image of the anchor itself (any caption of it), and --
by ``mining`` -- never the image of a text that shares any (``'any'``) or all (``'all'``) of the
anchor's content words. VSE++ and InfoNCE use the whole batch and exclude only pairs of the same
image. Clicked queries may be weighted by their click counts (``click_weight``).

Validation (:mod:`emit.retrieval.pairs`): after each epoch text-to-image R@1/5/10 and the median
rank are measured on the held-out images (:func:`emit.retrieval.evaluate.score_validation`) and
the epoch with the best mean of R@1, R@5 and R@10 (over tasks) is kept.

With ``out=`` the run is resumable (:mod:`emit.retrieval.checkpoint`): a rerun after a kill
continues with the next epoch and ends with exactly the weights of an uninterrupted run. When
training ends the best model is saved with its hubness bank (:mod:`emit.retrieval.hubness`) and
the checkpoint removed; rerunning a finished run with the same settings and data just loads it
(and writes its bank again if it is missing, unreadable or another model's). ``training.png``
shows the loss and validation curves (:func:`emit.plots.plot_curves`; redrawn during training
at most every 30 s, and at the end).

Under ``torchrun`` (:mod:`emit.distributed`) the same loop is data-parallel: ``batch_size`` is
the global batch, each rank encodes its slice, and the losses see the gathered global batch
(:func:`global_task_loss`), so N processes follow one process's curve to rounding.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from emit import distributed
from emit.commit import TornFolderError, folder_commit
from emit.config import to_dict
from emit.devices import resolve_device
from emit.files import atomic_write_bytes
from emit.plots import plot_curves
from emit.problems import EmitError
from emit.retrieval.checkpoint import data_fingerprint, is_trained, module_state, resume, write_checkpoint
from emit.retrieval.config import RetrievalConfig, resolve_data_settings, resolve_tasks
from emit.retrieval.distances import normalise_rows, pairwise_sq_dist
from emit.retrieval.encoders.base import TextEncoder
from emit.retrieval.encoders.projection import ImageProjection
from emit.retrieval.encoders.registry import build_encoder
from emit.retrieval.evaluate import score_validation
from emit.retrieval.hubness import bank_usable, build_bank
from emit.retrieval.layout import CHECKPOINT, CURVES
from emit.retrieval.losses.batch import LossBatch, with_negatives
from emit.retrieval.losses.registry import get_loss
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs, training_split
from emit.text.tokenize import tokenize
from emit.text.vectors import WordVectors

log = logging.getLogger("emit")

PLOT_EVERY_SECONDS = 30.0  # training.png is redrawn after an epoch when this long has passed, and at the end

EpochHook = Callable[[int, dict[str, Any]], None]
StepHook = Callable[["TrainState"], None]


# --------------------------------------------------------------------------- pieces of a step


def scheduled_lr(config: RetrievalConfig, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``.

    Computed from the step alone, not kept in a scheduler, so a resumed run continues on the
    same curve. (A cosine run cannot be resumed with another epoch count: see
    :func:`emit.retrieval.checkpoint.comparable_settings`.)
    """
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return config.lr


def auto_margin(features: np.ndarray, rows: np.ndarray, batch_size: int = 512, n_negatives: int = 5,
                seed: int = 0, batches: int = 4) -> float:
    """Where the hard negatives sit: the median squared distance from an image to its
    ``n_negatives``-th nearest other image within a random batch of training images.

    With a text on its own image, PATR's hinge on a negative vanishes once the negative is
    ``margin`` away; at this scale the mined negatives of about half the anchors are already far
    enough, while nearer ones keep being pushed. (Word-overlap exclusion removes some of the
    nearest images, so the negatives actually mined are, if anything, further.) Images with
    identical features are ignored; a few batches (drawn with ``seed``) of at most 2048 images.
    """
    uniq = np.unique(rows)
    if len(uniq) < 2:
        return 1.0
    size = min(batch_size, len(uniq), 2048)
    k = min(max(n_negatives, 1), size - 1)
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(batches if len(uniq) > size else 1):
        pick = rng.choice(uniq, size, replace=False)
        x = torch.from_numpy(np.asarray(features, dtype=np.float64)[pick])
        d = pairwise_sq_dist(x, x)
        d[d <= 1e-12] = float("inf")  # itself and exact duplicates
        kth = torch.sort(d, dim=1).values[:, k - 1]
        found.append(kth[torch.isfinite(kth)])
    values = torch.cat(found)
    return float(values.median()) if len(values) else 1.0


def click_weights(pairs: Pairs, how: str) -> np.ndarray:
    """Per-pair loss weights: 1, log(1 + clicks) or clicks."""
    if pairs.counts is None or how == "none":
        return np.ones(len(pairs))
    if how == "log":
        return np.log1p(pairs.counts)
    return pairs.counts.copy()


def task_loss(text: torch.Tensor, image: torch.Tensor, rows: torch.Tensor, tokens: Sequence[Sequence[str]],
              weights: torch.Tensor, config: RetrievalConfig, margin: float,
              temperature: float | torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean loss of one task's batch: texts ``(B, D)`` against their images ``(B, D)``.

    ``rows`` (B,) identify the images (pairs of one image are never each other's negatives);
    ``tokens`` are the texts' tokens, for word-overlap exclusion in mining. The loss is
    ``config.loss`` from the registry, at ``temperature`` (default ``config.temperature``).
    """
    per = pair_losses(text, image, rows, tokens, weights, config, margin, temperature)
    return (per * weights).sum() / weights.sum()


def pair_losses(text: torch.Tensor, image: torch.Tensor, rows: torch.Tensor, tokens: Sequence[Sequence[str]],
                weights: torch.Tensor, config: RetrievalConfig, margin: float,
                temperature: float | torch.Tensor | None = None) -> torch.Tensor:
    """(B,) unweighted losses of one task's batch (negatives mined in it if the loss needs them)."""
    spec = get_loss(config.loss)
    batch = LossBatch(text, image, rows, tokens, weights, margin,
                      config.temperature if temperature is None else temperature)
    if spec.needs_negatives:
        batch = with_negatives(batch, config)
    per: torch.Tensor = spec(batch, config)
    return per


def global_task_loss(text: torch.Tensor, image: torch.Tensor, rows: torch.Tensor,
                     tokens: Sequence[Sequence[str]], weights: torch.Tensor, config: RetrievalConfig,
                     margin: float, temperature: float | torch.Tensor | None = None, *,
                     known: tuple[torch.Tensor, Sequence[Sequence[str]], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch's :func:`task_loss`, and the global loss's value.

    Each rank holds a slice of the global batch: its texts ``(b, D)``, images, image rows,
    tokens and weights. All of them are gathered (features with gradients, the rest as
    constants), so every loss -- its masks of same image and same text, its in-batch negatives,
    PATR's and triplet's mining -- sees the global batch exactly as one process would. The
    returned part is ``sum(w_i * l_i) / sum(w)`` over this rank's own rows ``i`` against all
    gathered columns; the parts of all ranks add up to the global loss, and since the gather's
    backward sums every rank's gradient into the rows' owner, the parameter gradients summed
    over ranks are one process's on the concatenated batch. (Each rank scores the whole (B, B)
    matrix, as one process would: the existing losses and the miner work on square batches.
    The text encoder and the image projection, the rest of a step, run on the slice only.)
    Without a process group: ``task_loss`` and its detached value.

    ``known`` gives the global batch's rows, tokens and weights when the caller knows them (the
    training loop gathers the pair indices and looks them up: every rank holds the same data),
    which saves their gathers; each collective is a wait for the slowest rank.
    """
    if not distributed.active():
        loss = task_loss(text, image, rows, tokens, weights, config, margin, temperature)
        return loss, loss.detach()
    dim = text.shape[1]
    # One gather for both sides. The image side is trained when a projection maps the cached
    # features; else it is a constant, and the gradient the gather hands back for it is dropped.
    both = distributed.gather_with_grad(torch.cat([text, image], dim=1))
    all_text, all_image = both[:, :dim], both[:, dim:]
    if known is None:
        all_rows = distributed.gather_constant(rows.to(text.device))  # NCCL gathers CUDA tensors only
        all_tokens: Sequence[Sequence[str]] = distributed.gather_objects([list(t) for t in tokens])
        all_weights = distributed.gather_constant(weights)
    else:
        all_rows, all_tokens, all_weights = known
    per = pair_losses(all_text, all_image, all_rows, all_tokens, all_weights, config, margin, temperature)
    own = distributed.shard(len(per))
    total = all_weights.sum()
    return (per[own] * all_weights[own]).sum() / total, (per.detach() * all_weights).sum() / total


class _Batches:
    """Index batches of one task in an epoch: one exact pass, or cycling passes (smaller task)."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator, cycle: bool) -> None:
        self.n, self.rng, self.cycle = n, rng, cycle
        self.size = min(batch_size, n) if cycle else batch_size
        self.order = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        if self.cycle and self.pos + self.size > self.n:
            self.order, self.pos = self.rng.permutation(self.n), 0
        out = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return out


@dataclass
class Task:
    """One task's training pairs with their tokens and per-pair weights (:func:`prepare_tasks`)."""

    name: str
    pairs: Pairs
    tokens: list[list[str]]
    weights: np.ndarray


def prepare_tasks(tasks: Mapping[str, Pairs], config: RetrievalConfig) -> list[Task]:
    """The tasks of a run, in order: their texts tokenised, clicks weighted by ``click_weight``."""
    return [Task(name, p, [tokenize(t) for t in p.texts],
                 click_weights(p, config.click_weight) if name == "clicks" else np.ones(len(p)))
            for name, p in tasks.items()]


def check_global_batch(config: RetrievalConfig) -> int:
    """The number of processes training together; an error unless ``batch_size`` (the global
    batch) splits evenly over them, so that every rank gets a batch of the same shape."""
    world = distributed.world_size()
    if config.batch_size % world:
        raise EmitError(f"--batch-size {config.batch_size} is the global batch and does not split evenly "
                        f"over {world} processes; use a multiple of {world}")
    return world


def steps_per_epoch(tasks: Iterable[Pairs], batch_size: int) -> int:
    """Steps of one epoch: one pass over the larger task's pairs."""
    return max(math.ceil(len(pairs) / batch_size) for pairs in tasks)


# --------------------------------------------------------------------------- the state and the loop


@dataclass
class TrainState:
    """What training carries from step to step: the modules being trained, their optimiser and
    parameters, the margin and temperature of the loss, and -- between epochs -- the history of
    epoch records and the best epoch so far (``{"epoch", "score", "encoder", "projection"}``)."""

    config: RetrievalConfig
    encoder: TextEncoder
    projection: ImageProjection | None
    optimiser: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    margin: float
    temperature: float | torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def train(self) -> None:
        self.encoder.train()
        if self.projection is not None:
            self.projection.train()

    def eval(self) -> None:
        self.encoder.eval()
        if self.projection is not None:
            self.projection.eval()

    def model(self, *, margin: float | None = None, backbone: dict[str, Any] | None = None,
              info: dict[str, Any] | None = None) -> RetrievalModel:
        """The model of the current weights (sharing the modules), e.g. to score validation."""
        return RetrievalModel(self.encoder, self.config, self.margin if margin is None else margin,
                              self.projection, backbone, {} if info is None else info)


def new_projection(config: RetrievalConfig, dim: int) -> ImageProjection | None:
    """The image projection a run starts from (seeded by ``config.seed``), if it learns one."""
    if not config.image_projection:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return ImageProjection(dim, dim)


def new_state(config: RetrievalConfig, encoder: TextEncoder, projection: ImageProjection | None,
              margin: float, *, optimiser: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
              | None = None, temperature: float | torch.Tensor | None = None) -> TrainState:
    """A fresh :class:`TrainState`: Adam (``lr``, ``beta1``, ``beta2`` of ``config``) over the
    trainable parameters of ``encoder`` and ``projection``, unless ``optimiser(params)`` builds
    another; ``temperature`` (a float, or a learnable tensor the caller adds to the optimiser)
    defaults to ``config.temperature``."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    if projection is not None:
        params += list(projection.parameters())
    opt = (optimiser(params) if optimiser is not None
           else torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2)))
    return TrainState(config, encoder, projection, opt, params, margin,
                      config.temperature if temperature is None else temperature)


def train_step(state: TrainState, features: torch.Tensor, picks: Sequence[tuple[Task, np.ndarray]],
               lr: float, epoch: int) -> tuple[float, list[float]]:
    """One optimiser step at learning rate ``lr`` on one batch of each task (``picks``: the task
    and the indices of its batch), against the image ``features`` (precomputed, normalised as
    the run's config says). Returns the step's loss (the mean of the task losses, eq. 4) and
    each task's loss; an error if the loss is not finite.

    Under a process group (:mod:`emit.distributed`) each rank passes its own slice of the
    global batch; the losses are the global batch's (:func:`global_task_loss`) and the gradients
    are summed over ranks before the step, so every rank takes the same step.
    """
    config = state.config
    for group in state.optimiser.param_groups:
        group["lr"] = lr
    split = distributed.active()
    losses, parts = [], []
    for t, idx in picks:
        rows = torch.from_numpy(t.pairs.images[idx])
        image = features[rows] if state.projection is None else state.projection(features[rows])
        text = state.encoder.encode([t.pairs.texts[i] for i in idx])
        weights = torch.from_numpy(t.weights[idx]).to(device=text.device, dtype=text.dtype)
        tokens = [t.tokens[i] for i in idx]
        if split:
            # The pairs' indices are the ids to gather: every rank holds the same pairs, so the
            # global batch's image rows, tokens and weights follow from them.
            mine = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(text.device)
            every = distributed.gather_constant(mine).cpu().numpy()
            known = (torch.from_numpy(t.pairs.images[every]), [t.tokens[i] for i in every],
                     torch.from_numpy(t.weights[every]).to(device=text.device, dtype=text.dtype))
            part, value = global_task_loss(text, image, rows, tokens, weights, config, state.margin,
                                           state.temperature, known=known)
            parts.append(part)
            losses.append(value)
        else:
            losses.append(task_loss(text, image, rows, tokens, weights, config, state.margin,
                                    state.temperature))
    loss = torch.stack(losses).mean()  # eq. 4: the mean of the task losses
    if not torch.isfinite(loss):  # the global value: every rank stops together
        raise EmitError(f"the training loss became {float(loss)} in epoch {epoch + 1}; lower --lr "
                        "or set --margin, or normalise the image features (--normalise-images)")
    state.optimiser.zero_grad(set_to_none=True)
    if split:
        torch.stack(parts).mean().backward()  # the ranks' parts add up to eq. 4's loss
        distributed.all_reduce_gradients(distributed.optimiser_params(state.optimiser), same_graph=True)
    else:
        loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.params, config.grad_clip)
    state.optimiser.step()
    return float(loss.detach()), [float(x.detach()) for x in losses]


def train_one_epoch(state: TrainState, features: torch.Tensor, tasks: Sequence[Task], epoch: int, *,
                    progress: bool = False, on_step: StepHook | None = None) -> dict[str, Any]:
    """Epoch ``epoch`` (0-based) of ``config.epochs``: one pass over the larger task, on image
    ``features`` (N, D) precomputed and normalised (:func:`training_features`).

    The epoch seeds its own shuffling and dropout from ``config.seed`` and its number, and the
    learning rate follows the step (:func:`scheduled_lr`), so an epoch gives the same weights
    whenever it runs -- after a resume too. ``on_step(state)`` is called after every step (e.g.
    weight averaging). Returns the epoch's record: ``epoch`` (1-based), ``loss`` (mean over
    steps), ``steps``, and per task ``loss_<task>`` and ``pairs_<task>`` (pairs seen).

    Under a process group the batches are global batches of ``config.batch_size`` pairs: every
    rank draws the same epoch permutation (the seed and the epoch number, DistributedSampler's
    ``set_epoch``) and takes its own contiguous slice (:func:`local_picks`), so all ranks hold
    batches of one shape.
    """
    config = state.config
    n_steps = steps_per_epoch([t.pairs for t in tasks], config.batch_size)
    world = check_global_batch(config)
    # dropout: same per epoch on resume; each rank its own masks
    torch.manual_seed(distributed.rank_seed(config.seed * 1_000_003 + epoch))
    rng = np.random.default_rng([config.seed, epoch])
    batches = [_Batches(len(t.pairs), config.batch_size, rng,
                        cycle=math.ceil(len(t.pairs) / config.batch_size) < n_steps) for t in tasks]
    state.train()
    sums = [0.0] * len(tasks)
    seen = [0] * len(tasks)
    total = 0.0
    done = 0
    bar = tqdm(range(n_steps), disable=not progress, desc=f"retrieval epoch {epoch + 1}/{config.epochs}",
               unit="step", leave=False)
    for i in bar:
        drawn = [(k, t, b.next()) for k, (t, b) in enumerate(zip(tasks, batches, strict=True))]
        mine = local_picks(drawn, world, distributed.rank())
        if not mine:  # every task's batch smaller than the number of ranks: all ranks skip it
            continue
        loss, parts = train_step(state, features, [(t, idx) for _, t, idx, _ in mine],
                                 scheduled_lr(config, epoch * n_steps + i, config.epochs * n_steps), epoch)
        for (k, _, _, n_global), part in zip(mine, parts, strict=True):
            sums[k] += part
            seen[k] += n_global
        total += loss
        done += 1
        bar.set_postfix(loss=f"{loss:.4g}")
        if on_step is not None:
            on_step(state)
    bar.close()
    if not done:
        raise EmitError(f"epoch {epoch + 1} had no batch with at least one pair per process; give more "
                        f"pairs or run fewer than {world} processes")
    record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / done, "steps": done}
    for k, t in enumerate(tasks):
        record[f"loss_{t.name}"] = sums[k] / n_steps
        record[f"pairs_{t.name}"] = seen[k]
    return record


def local_picks(drawn: Sequence[tuple[int, Task, np.ndarray]], world: int, rank: int
                ) -> list[tuple[int, Task, np.ndarray, int]]:
    """This rank's slice of each task's global batch, as ``(task number, task, indices, global
    pairs)``. A global batch is cut to a multiple of ``world`` pairs so every rank gets the same
    shape (the cut pairs, at most ``world - 1`` of an epoch's last batch, are drawn again in the
    next epoch's shuffle); a task left with none sits the step out. One process: unchanged."""
    if world == 1:
        return [(k, t, idx, len(idx)) for k, t, idx in drawn]
    out = []
    for k, t, idx in drawn:
        keep = len(idx) - len(idx) % world
        if keep:
            out.append((k, t, idx[:keep][distributed.shard(keep, rank, world)], keep))
    return out


def keep_best(state: TrainState, epoch: int, score: float | None) -> None:
    """Remember epoch ``epoch``'s weights if its validation ``score`` is the best so far (the
    first best is kept; without validation, every epoch replaces the last: the last is kept)."""
    best = state.best
    if best is None or score is None or (best["score"] is not None and score > best["score"]):
        state.best = {"epoch": epoch + 1, "score": score, "encoder": module_state(state.encoder),
                      "projection": module_state(state.projection)}


def as_features(features: Any) -> np.ndarray:
    """``features`` as a finite, non-empty float32 ``(N, D)`` matrix; an error otherwise."""
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise EmitError(f"image features must be a non-empty (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise EmitError("image features hold NaN or infinite values; extract them again")
    return x


def training_features(features: np.ndarray, config: RetrievalConfig) -> torch.Tensor:
    """The image features the loop trains on: normalised if ``config.normalise_images``."""
    return torch.from_numpy(normalise_rows(features) if config.normalise_images else features)


# --------------------------------------------------------------------------- the whole run


def train_retrieval(
    features: Any,
    titles: Pairs | None = None,
    clicks: Pairs | None = None,
    config: RetrievalConfig | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    val_titles: Pairs | None = None,
    val_clicks: Pairs | None = None,
    image_keys: Sequence[str] | None = None,
    encoder: TextEncoder | None = None,
    vectors: WordVectors | None = None,
    backbone: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
    device: str | torch.device | None = "cpu",
) -> RetrievalModel:
    """Train and return a :class:`RetrievalModel`; see the module docstring.

    ``device`` (:func:`emit.devices.resolve_device`) is where the text encoder, the projection
    and the image features live while training; the returned model is on the CPU, and its
    saved files are the same whichever device trained it.

    ``features`` (N, D) are the frozen image features; ``titles`` / ``clicks`` index into them.
    Validation pairs are given, or held out by ``config.val_fraction`` of the images (named by
    ``image_keys``, default their row numbers). ``encoder`` overrides the configured one;
    ``vectors`` are the word vectors of a new 'lstm' encoder. ``backbone`` is the identity of
    the image backbone (recorded, and checked when the model meets an index). With ``out`` the
    run checkpoints every epoch and resumes; ``on_epoch(epoch, record)`` is called after each
    epoch's checkpoint.

    Inside a process group (``torchrun``, :mod:`emit.distributed`) every rank calls this with
    the same data: the ranks train data-parallel on slices of each global batch of
    ``config.batch_size`` pairs and stay in sync; rank 0 alone validates, writes the checkpoint
    and the run (the others wait for it), and every rank resumes from the checkpoint and
    returns the same model. ``out`` must then be on a file system all ranks see.
    """
    config = (config or RetrievalConfig()).validate()
    config = replace(config, tasks=resolve_tasks(config.tasks, titles is not None and len(titles) > 0,
                                                 clicks is not None and len(clicks) > 0))
    main = distributed.is_main()
    check_global_batch(config)
    progress = progress and main
    x_raw = as_features(features)
    n_images, dim = x_raw.shape
    tasks, val, validation = training_split(config, n_images, titles, clicks, val_titles=val_titles,
                                            val_clicks=val_clicks, image_keys=image_keys)
    texts = [t for p in tasks.values() for t in p.texts]
    if encoder is not None and config.encoder == "auto":  # the run records the encoder it was given
        config = replace(config, encoder=encoder.name)
    # 'auto' encoder and epochs: decided by the training texts, recorded in the run's config
    config = resolve_data_settings(config, texts, steps_per_epoch(tasks.values(), config.batch_size))
    fingerprint = data_fingerprint(x_raw, tasks, val)
    distributed.same_everywhere("the training data (features, texts, pairs)", fingerprint,
                                "give every process the same files, settings and feature cache")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        # Rank 0 may rewrite a finished run's bank: the others load the run once it is done.
        done = _finished(out_dir, config, fingerprint, x_raw, tasks) if main else None
        if distributed.broadcast_object(done is not None):
            distributed.barrier()
            return done if done is not None else _load_shared(out_dir)

    x = training_features(x_raw, config)
    train_rows = np.concatenate([p.images for p in tasks.values()])
    margin = (float(config.margin) if config.margin is not None
              else auto_margin(x.numpy(), train_rows, config.batch_size, config.n_negatives, config.seed))
    if encoder is None:
        encoder = build_encoder(config, texts, dim, vectors)
    if encoder.out_dim != dim:
        raise EmitError(f"the text encoder outputs {encoder.out_dim}-d vectors but the image features "
                        f"are {dim}-d; build it with out_dim={dim}")
    where = resolve_device(device)
    projection = new_projection(config, dim)
    encoder.to(where)
    state = new_state(config, encoder, None if projection is None else projection.to(where), margin)
    x = x.to(where)
    distributed.same_everywhere("the text encoder (vocabulary, word vectors, settings)",
                                distributed.digest(encoder.config()),
                                "give every process the same files and --vectors")
    start_epoch, resumed_from = 0, None
    ckpt = out_dir / CHECKPOINT if out_dir is not None else None
    # Rank 0's view decides: a rank that cannot see rank 0's checkpoint is told, not silently reset.
    if ckpt is not None and distributed.broadcast_object(ckpt.is_file()):
        if not ckpt.is_file():
            raise EmitError(f"{ckpt}: rank 0 resumes from this checkpoint but rank {distributed.rank()} "
                            "cannot see it; put --out on a file system every node shares")
        start_epoch, state.history, state.best = resume(ckpt, config, state.encoder, state.projection,
                                                        state.optimiser, fingerprint)
        resumed_from = start_epoch
        if main:
            log.info("%s: resuming after epoch %d of %d", out_dir, start_epoch, config.epochs)
    # The ranks build their modules alike, but start from rank 0's weights to be sure.
    distributed.broadcast_parameters([state.encoder, state.projection])

    run = prepare_tasks(tasks, config)
    plotted = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        record = train_one_epoch(state, x, run, epoch, progress=progress)
        # The weights are the same on every rank: rank 0 scores them, the others take its score.
        scored = (score_validation(state.model(margin=0.0), x_raw, val) if val else {"score": None}) if main \
            else None
        record["val"] = distributed.broadcast_object(scored)
        score = record["val"]["score"]
        record["seconds"] = round(time.perf_counter() - started, 2)
        state.history.append(record)
        keep_best(state, epoch, score)
        if main:
            log.info("epoch %d/%d: loss %.4g%s", epoch + 1, config.epochs, record["loss"],
                     "" if score is None else f", validation mean R@1/5/10 {score:.1f}")
        if out_dir is not None and ckpt is not None and state.best is not None:
            if main:
                write_checkpoint(ckpt, config, state.encoder, state.projection, state.optimiser,
                                 state.history, state.best, fingerprint)
                if time.perf_counter() - plotted >= PLOT_EVERY_SECONDS:  # a plot costs ~0.3 s
                    _write_curves(state.history, state.best["epoch"], out_dir / CURVES)
                    plotted = time.perf_counter()
            distributed.barrier()  # a kill after this leaves a checkpoint every rank resumes from
        if on_epoch is not None:
            on_epoch(epoch + 1, record)

    best = state.best
    assert best is not None  # epochs >= 1
    state.encoder.load_state_dict(best["encoder"])
    if state.projection is not None and best["projection"] is not None:
        state.projection.load_state_dict(best["projection"])
    state.eval()
    state.encoder.to("cpu")  # the model leaves as every loaded model is: on the CPU
    if state.projection is not None:
        state.projection.to("cpu")
    info = {"best_epoch": best["epoch"], "best_score": best["score"], "history": state.history,
            "pairs": {k: len(v) for k, v in tasks.items()}, "val_pairs": {k: len(v) for k, v in val.items()},
            "images": n_images, "dim": dim, "data_sha256": fingerprint, "resumed_from": resumed_from,
            "validation": validation}
    model = state.model(backbone=None if backbone is None else dict(backbone), info=info)
    if out_dir is not None and ckpt is not None:
        if main:
            save_run(out_dir, model, x_raw, tasks)
            ckpt.unlink(missing_ok=True)
        distributed.barrier()
    return model


def _load_shared(out_dir: Path) -> RetrievalModel:
    """A finished run that rank 0 found in ``out_dir``, loaded by another rank."""
    if not is_trained(out_dir):
        raise EmitError(f"{out_dir}: rank 0 found a finished run here but rank {distributed.rank()} cannot "
                        "see it; put --out on a file system every node shares")
    return RetrievalModel.load(out_dir)


def _finished(out_dir: Path, config: RetrievalConfig, fingerprint: str, features: np.ndarray,
              tasks: Mapping[str, Pairs]) -> RetrievalModel | None:
    """The model a finished run in ``out_dir`` holds (its bank written again if unusable), None
    if there is none; an error if it was trained with other settings or data."""
    done = None
    if is_trained(out_dir):
        try:
            done = RetrievalModel.load(out_dir)
        except TornFolderError as exc:  # a killed or mixed save: this run writes it again
            log.warning("%s; training it again", exc)
    if done is None:
        return None
    if to_dict(done.config) != to_dict(config) or done.info.get("data_sha256") != fingerprint:
        raise EmitError(f"{out_dir}: already holds a model trained with other settings or data; "
                        "choose another output folder or delete this one")
    log.info("%s: already trained; loading it", out_dir)
    if not bank_usable(out_dir, done):  # older emit, or a missing / unreadable / foreign bank
        with folder_commit(out_dir, label="retrieval-run"):
            write_bank(done, features, tasks, out_dir)
    return done


def save_run(out: Path, model: RetrievalModel, features: np.ndarray, tasks: Mapping[str, Pairs]) -> None:
    """The model, its hubness bank and its curves as one commit: all old or all new."""
    with folder_commit(out, label="retrieval-run"):
        write_bank(model, features, tasks, out)
        model.save(out)
        _write_curves(model.info.get("history", []), model.info.get("best_epoch"), out / CURVES)


def write_bank(model: RetrievalModel, features: np.ndarray, tasks: Mapping[str, Pairs], out: Path) -> Path:
    """Save the hubness bank of ``model``: the images and texts it was trained on (the
    validation images are not in ``tasks``), so held-out evaluation never meets its own items."""
    bank = build_bank(model, features, np.concatenate([p.images for p in tasks.values()]),
                      [t for p in tasks.values() for t in p.texts], seed=model.config.seed)
    return bank.save(out)


def _write_curves(history: Sequence[Mapping[str, Any]], best_epoch: int | None, path: Path) -> Path:
    return atomic_write_bytes(path, plot_curves(history, best_epoch))


# --------------------------------------------------------------------------- a timing helper


def benchmark_steps(*, device: str | torch.device = "cpu", steps: int = 50, batch_size: int = 512,
                    image_dim: int = 1280, n_images: int = 4096, seed: int = 0) -> float:
    """Optimiser steps per second of this loop with the paper's text side (an LSTM, with InfoNCE and
    a learned image projection) on generated features and captions, on ``device`` (after one warm-up
    step). Inside a process group ``batch_size`` is the global batch and every rank times its
    share. For benchmarks (``benchmarks/gpu_check.py``, ``benchmarks/ddp_speed.py``)."""
    config = RetrievalConfig(encoder="lstm", batch_size=batch_size, tasks="titles", val_fraction=0.0,
                             margin=1.0, seed=seed).validate()
    rng = np.random.default_rng(seed)
    vocab = [f"word{i}" for i in range(2000)]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(3, 7)))) for _ in range(2 * n_images)]
    rows = np.repeat(np.arange(n_images), 2)
    vectors = WordVectors.from_words(vocab, rng.standard_normal((len(vocab), 50)).astype(np.float32),
                                     source="generated")
    feats = rng.standard_normal((n_images, image_dim)).astype(np.float32)
    where = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(config, texts, image_dim, vectors).to(where)
    projection = new_projection(config, image_dim)
    state = new_state(config, encoder, None if projection is None else projection.to(where), 1.0)
    distributed.broadcast_parameters([state.encoder, state.projection])
    task = prepare_tasks({"titles": Pairs(texts, rows)}, config)[0]
    x = training_features(feats, config).to(where)
    order = np.random.default_rng(seed).permutation(len(texts))
    share = distributed.shard(batch_size)

    def step(i: int) -> None:
        idx = order[(i * batch_size) % (len(order) - batch_size):][:batch_size][share]
        train_step(state, x, [(task, idx)], config.lr, 0)

    state.train()
    step(0)  # warm-up: first calls allocate and pick kernels
    if where.type == "cuda":
        torch.cuda.synchronize(where)
    distributed.barrier()
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    if where.type == "cuda":
        torch.cuda.synchronize(where)
    return steps / (time.perf_counter() - start)
