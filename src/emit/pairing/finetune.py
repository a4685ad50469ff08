"""Fine-tune the whole image network (``--tune-full-model``), as the EMIT paper does.

The backbone is trained end to end with a temporary multi-label head (BCE plus the listwise
term over the product's own tags). Colour is the label, so augmentation is geometric only:
mirror and a mild crop, never colour jitter. Each epoch is checkpointed; a killed run resumes
from the last finished epoch. The tuned weights are saved as ``backbone.safetensors`` in the
model folder, and the normal heads are then trained on features of the tuned network.

Under ``torchrun --nproc_per_node N -m emit pair train ... --tune-full-model`` the fine-tuning
is data-parallel (:mod:`emit.distributed`; gloo on the CPU, NCCL on CUDA): every rank draws the
same shuffled global batches of ``--batch-size`` images and takes its own contiguous slice;
each rank's loss is its images' share of the global batch's mean, and the gradients are summed
over ranks, so every rank takes the same step. (BatchNorm statistics stay per rank, as in
plain DDP.) Rank 0 writes the checkpoints and the tuned weights while the others wait; a rerun
resumes on every rank. The rest of the pairing run (features, heads, the model folder) is
single-process work: rank 0 carries on with it and the other ranks end there.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from emit import distributed
from emit.config import PairingConfig
from emit.data.images import ImageError, load_image
from emit.data.products import Product
from emit.devices import to_device
from emit.files import atomic_write, atomic_write_safetensors
from emit.pairing.cost import tag_costs
from emit.pairing.tagger import LISTWISE_TEMPERATURE
from emit.problems import EmitError, ProblemLog
from emit.text.labels import build_vocab
from emit.vision.backbones import Backbone, create_backbone, loadable_state_dict

log = logging.getLogger("emit")
TUNED_FILE = "backbone.safetensors"  # part of the model folder, written in its commit
# The finished fine-tuning until that commit; the same file name, since the name is part of
# the backbone's identity (and so of its feature-cache key).
TUNED_WORK = f"finetune/{TUNED_FILE}"
CHECKPOINT = "finetune.ckpt"


def finetune_backbone(products: Sequence[Product], backbone: Backbone, config: PairingConfig,
                      out: Path, *, problems: ProblemLog, progress: bool = True) -> Backbone:
    """The backbone fine-tuned on ``products`` (resumed, or reused if ``out`` holds it); see the
    module docstring. Launched by torchrun, every rank fine-tunes and only rank 0 returns."""
    if not distributed.launched() or distributed.active():
        return _finetune(products, backbone, config, out, problems=problems, progress=progress)
    device = next((p.device for p in backbone.model.parameters()), torch.device("cpu"))
    with distributed.process_group(device):
        tuned = _finetune(products, backbone, config, out, problems=problems, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        # The heads and the model folder are rank 0's; a second writer would only race it.
        log.info("rank %s: fine-tuning done; rank 0 trains the heads and writes the model",
                 os.environ["RANK"])
        raise SystemExit(0)
    return tuned


def _finetune(products: Sequence[Product], backbone: Backbone, config: PairingConfig, out: Path, *,
              problems: ProblemLog, progress: bool) -> Backbone:
    world, main = distributed.world_size(), distributed.is_main()
    if config.batch_size % world:
        raise EmitError(f"--batch-size {config.batch_size} is the global batch and does not split evenly "
                        f"over {world} processes; use a multiple of {world}")
    progress = progress and main
    out.mkdir(parents=True, exist_ok=True)
    for done in (out / TUNED_WORK, out / TUNED_FILE):
        if done.is_file() and not (out / CHECKPOINT).is_file():
            log.info("reusing the fine-tuned backbone in %s", done)
            return create_backbone(config.backbone, weights=done)
    vocab = build_vocab([t for p in products for t in p.optional_tags], config.min_count, config.top_k)
    samples = [(p.image_path(n), p.optional_tags.index(t), vocab.encode_many(p.optional_tags))
               for p in products for n, t in zip(p.images, p.tags, strict=True) if t is not None]
    size = backbone.image_size
    augment = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
    ])
    model = backbone.model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # where the caller put it
    head = nn.Linear(backbone.dim, vocab.size).to(device)
    params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.finetune_lr},
              {"params": head.parameters(), "lr": config.lr}]
    optimiser = torch.optim.Adam(params)
    start_epoch = 0
    ckpt = out / CHECKPOINT
    if distributed.broadcast_object(ckpt.is_file()):  # rank 0's view decides
        if not ckpt.is_file():
            raise EmitError(f"{ckpt}: rank 0 resumes from this checkpoint but rank {distributed.rank()} "
                            "cannot see it; put --out on a file system every node shares")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch = int(state["epoch"])
        log.info("resuming fine-tuning after epoch %d", start_epoch)
    distributed.broadcast_parameters([model, head])  # the new head's random start: rank 0's
    rng = random.Random(config.seed)  # the same on every rank: they share each global batch
    torch.manual_seed(distributed.rank_seed(config.seed))  # augmentation: each rank its own
    cache: dict[Path, torch.Tensor | None] = {}

    def tensor(path: Path) -> torch.Tensor | None:
        if path not in cache:
            try:
                cache[path] = backbone.transform(load_image(path))
            except ImageError as exc:
                problems.add(path, path.name, f"{exc.what}; image skipped in fine-tuning", exc.fix)
                cache[path] = None
        return cache[path]

    for epoch in range(start_epoch, config.finetune_epochs):
        model.train()
        order = list(range(len(samples)))
        rng.shuffle(order)
        bar = tqdm(range(0, len(order), config.batch_size), disable=not progress,
                   desc=f"fine-tune epoch {epoch + 1}/{config.finetune_epochs}")
        for start in bar:
            batch = [samples[i] for i in order[start:start + config.batch_size]]
            if world > 1:  # this rank's slice; the cut (< world images) is drawn again next epoch
                keep = len(batch) - len(batch) % world
                batch = batch[:keep][distributed.shard(keep)]
            images = [(tensor(p), t, c) for p, t, c in batch]
            images = [b for b in images if b[0] is not None]
            if world > 1:
                loss = _shared_step(images, model, head, augment, vocab.size, config, optimiser)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")
                continue
            if not images:
                continue
            loss = _batch_loss(images, model, head, augment, vocab.size, config)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if main:
            state = {"model": model.state_dict(), "head": head.state_dict(),
                     "optimiser": optimiser.state_dict(), "epoch": epoch + 1}
            atomic_write(ckpt, lambda fh, s=state: torch.save(s, fh))
        distributed.barrier()  # every rank resumes from the same checkpoint after a kill
    model.eval()
    model.to("cpu")  # saved and reloaded from CPU tensors, whatever device trained it
    if main:
        # Not TUNED_FILE yet: the model folder's commit moves it there with the heads it goes with.
        atomic_write_safetensors(out / TUNED_WORK, loadable_state_dict(backbone))
        ckpt.unlink(missing_ok=True)
    distributed.barrier()
    return create_backbone(config.backbone, weights=out / TUNED_WORK)


def _shared_step(images: Sequence[tuple[torch.Tensor, int, torch.Tensor]], model: nn.Module,
                 head: nn.Module, augment: v2.Compose, n_labels: int, config: PairingConfig,
                 optimiser: torch.optim.Optimizer) -> float | None:
    """One data-parallel step on this rank's ``images`` of a global batch; the global batch's
    mean loss (None when no rank had a readable image: every rank skips the step)."""
    n_global = distributed.all_sum(float(len(images)))
    if n_global == 0:
        return None
    optimiser.zero_grad()
    share = 0.0
    if images:  # a rank whose images were all unreadable still joins the gradient sum, with zeros
        loss = _batch_loss(images, model, head, augment, n_labels, config) * (len(images) / n_global)
        loss.backward()
        share = float(loss.detach())
    distributed.all_reduce_gradients(distributed.optimiser_params(optimiser))
    optimiser.step()
    return distributed.all_sum(share)


def _batch_loss(images: Sequence[tuple[torch.Tensor, int, torch.Tensor]], model: nn.Module, head: nn.Module,
                augment: v2.Compose, n_labels: int, config: PairingConfig) -> torch.Tensor:
    """Mean BCE plus the listwise term over ``images`` (each: image, true tag, candidate tags)."""
    x = torch.stack([augment(img) for img, _, _ in images])
    most = max(len(c) for _, _, c in images)
    cand = torch.zeros(len(images), most, n_labels)
    mask = torch.zeros(len(images), most, dtype=torch.bool)
    for i, (_, _, c) in enumerate(images):
        cand[i, : len(c)] = torch.from_numpy(c)
        mask[i, : len(c)] = True
    true = torch.tensor([t for _, t, _ in images])
    y = cand[torch.arange(len(images)), true]
    device = next(head.parameters()).device
    if device.type != "cpu":  # one copy of the batch to the model's device
        x, cand, mask, true, y = (to_device(t, device) for t in (x, cand, mask, true, y))
    z = head(model(x))
    costs = tag_costs(z, cand, "bce").masked_fill(~mask, float("inf"))
    return (F.binary_cross_entropy_with_logits(z, y)
            + config.listwise_weight * F.cross_entropy(-costs / LISTWISE_TEMPERATURE, true))

