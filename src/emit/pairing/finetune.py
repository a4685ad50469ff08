"""Fine-tune the whole image network (``--tune-full-model``), as the EMIT paper does.

The backbone is trained end to end with a temporary multi-label head (BCE plus the listwise
term over the product's own tags). Colour is the label, so augmentation is geometric only:
mirror and a mild crop, never colour jitter. Each epoch is checkpointed; a killed run resumes
from the last finished epoch. The tuned weights are saved as ``backbone.safetensors`` in the
model folder, and the normal heads are then trained on features of the tuned network.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from emit.config import PairingConfig
from emit.data.images import ImageError, load_image
from emit.data.products import Product
from emit.files import atomic_write, atomic_write_safetensors
from emit.pairing.cost import tag_costs
from emit.pairing.tagger import LISTWISE_TEMPERATURE
from emit.problems import ProblemLog
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
    head = nn.Linear(backbone.dim, vocab.size)
    params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.finetune_lr},
              {"params": head.parameters(), "lr": config.lr}]
    optimiser = torch.optim.Adam(params)
    start_epoch = 0
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch = int(state["epoch"])
        log.info("resuming fine-tuning after epoch %d", start_epoch)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
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
            images = [(tensor(p), t, c) for p, t, c in batch]
            images = [b for b in images if b[0] is not None]
            if not images:
                continue
            x = torch.stack([augment(img) for img, _, _ in images])
            most = max(len(c) for _, _, c in images)
            cand = torch.zeros(len(images), most, vocab.size)
            mask = torch.zeros(len(images), most, dtype=torch.bool)
            for i, (_, _, c) in enumerate(images):
                cand[i, : len(c)] = torch.from_numpy(c)
                mask[i, : len(c)] = True
            true = torch.tensor([t for _, t, _ in images])
            y = cand[torch.arange(len(images)), true]
            z = head(model(x))
            costs = tag_costs(z, cand, "bce").masked_fill(~mask, float("inf"))
            loss = (F.binary_cross_entropy_with_logits(z, y)
                    + config.listwise_weight * F.cross_entropy(-costs / LISTWISE_TEMPERATURE, true))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        state = {"model": model.state_dict(), "head": head.state_dict(),
                 "optimiser": optimiser.state_dict(), "epoch": epoch + 1}
        atomic_write(ckpt, lambda fh, s=state: torch.save(s, fh))
    model.eval()
    # Not TUNED_FILE yet: the model folder's commit moves it there with the heads it goes with.
    atomic_write_safetensors(out / TUNED_WORK, loadable_state_dict(backbone))
    ckpt.unlink(missing_ok=True)
    return create_backbone(config.backbone, weights=out / TUNED_WORK)

