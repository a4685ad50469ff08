"""Data-parallel retrieval training: 2 processes (DDP over gloo) against 1 process, on the CPU.

Generated data (no files, no feature extraction): ``--images`` random image feature vectors of
``--dim`` dimensions and, per image, ``--captions`` captions of 3-6 words from a 2,000-word
vocabulary whose 50-d word vectors are random too. The model is ``emit retrieval train``'s
LSTM model (256 wide, InfoNCE over the global batch, a learned image
projection, Adam), titles only, global batch ``--batch-size``.

Both runs step through the same global batches from the same start (rank 0's weights), so their
loss curves should agree to rounding: the 2-process run computes the global batch's loss and
gradient (:mod:`emit.distributed`). Each process gets ``--threads`` torch threads (default 1),
so 2 processes use 2 cores and the 1-process baseline uses 1; ``--baseline-threads 2`` gives the
baseline both cores instead. Timing is the epochs' wall time (after a warm-up step), in
optimiser steps per second of global batches, and each process's CPU time per step: on a
shared, busy machine the wall time mostly measures the neighbours, the CPU time does not (a
rank waiting at a collective sleeps; gloo does not spin).

    python benchmarks/ddp_speed.py                      # -> results/ddp_speed.json
    python benchmarks/ddp_speed.py --epochs 2 --images 2000    # quicker
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent


def make_data(n_images: int, dim: int, captions: int, seed: int = 0
              ) -> tuple[np.ndarray, list[str], np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_images, dim)).astype(np.float32)
    vocab = [f"word{i}" for i in range(2000)]
    table = rng.standard_normal((len(vocab), 50)).astype(np.float32)
    texts, rows = [], []
    for img in range(n_images):
        for _ in range(captions):
            texts.append(" ".join(rng.choice(vocab, size=int(rng.integers(3, 7)))))
            rows.append(img)
    return feats, texts, np.array(rows), vocab, table


def run(rank: int, world: int, port: int, args: argparse.Namespace, out: Path) -> None:
    """The training loop on one rank (or the single process, world 1); writes its figures."""
    from emit import distributed
    from emit.retrieval.config import RetrievalConfig
    from emit.retrieval.encoders.registry import build_encoder
    from emit.retrieval.pairs import Pairs
    from emit.retrieval.train import (
        new_projection,
        new_state,
        prepare_tasks,
        train_one_epoch,
        train_step,
        training_features,
    )
    from emit.text.vectors import WordVectors

    torch.set_num_threads(args.threads if world > 1 else args.baseline_threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    feats, texts, rows, vocab, table = make_data(args.images, args.dim, args.captions)
    cfg = RetrievalConfig(encoder="lstm", batch_size=args.batch_size, epochs=args.epochs, tasks="titles",
                          val_fraction=0.0,
                          margin=1.0).validate()
    torch.manual_seed(0)
    vectors = WordVectors.from_words(vocab, table, source="generated")
    encoder = build_encoder(cfg, texts, args.dim, vectors)
    state = new_state(cfg, encoder, new_projection(cfg, args.dim), 1.0)
    distributed.broadcast_parameters([state.encoder, state.projection])
    tasks = prepare_tasks({"titles": Pairs(texts, rows)}, cfg)
    x = training_features(feats, cfg)
    # warm-up: one untimed step (first calls allocate), on a copy so the timed runs start equal
    saved = ({k: v.clone() for k, v in state.encoder.state_dict().items()},
             {k: v.clone() for k, v in state.projection.state_dict().items()} if state.projection else None,
             state.optimiser.state_dict())
    idx = np.arange(cfg.batch_size)[distributed.shard(cfg.batch_size)]
    train_step(state, x, [(tasks[0], idx)], 0.0, 0)
    state.encoder.load_state_dict(saved[0])
    if state.projection is not None and saved[1] is not None:
        state.projection.load_state_dict(saved[1])
    state = new_state(cfg, state.encoder, state.projection, 1.0)  # a fresh optimiser
    records: list[dict[str, Any]] = []
    distributed.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(cfg.epochs):
        began = time.perf_counter()
        rec = train_one_epoch(state, x, tasks, epoch)
        rec["seconds"] = time.perf_counter() - began
        records.append(rec)
    total = time.perf_counter() - start
    n_steps = sum(r["steps"] for r in records)
    # CPU seconds this process spent per step: what the step costs a core, whatever else runs here
    cpu = distributed.gather_objects([(time.process_time() - cpu_start) / n_steps])
    if distributed.is_main():
        result = {"cpu_seconds_per_step_per_process": [round(c, 4) for c in cpu],
                  "processes": world, "threads_per_process": torch.get_num_threads(), "steps": n_steps,
                  "seconds": round(total, 2), "steps_per_s": round(n_steps / total, 3),
                  "pairs_per_s": round(n_steps * cfg.batch_size / total, 1),
                  "loss_per_epoch": [r["loss"] for r in records]}
        (out / f"world{world}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--captions", type=int, default=2, help="captions per image")
    ap.add_argument("--dim", type=int, default=1280, help="image feature size (Lite0's is 1280)")
    ap.add_argument("--batch-size", type=int, default=512, help="the global batch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each DDP process")
    ap.add_argument("--baseline-threads", type=int, default=1, help="torch threads of the 1-process run")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ddp_speed.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(0, 1, 0, args, work)
        mp.spawn(run, args=(2, free_port(), args, work), nprocs=2, join=True)
        one, two = (json.loads((work / f"world{w}.json").read_text()) for w in (1, 2))
    diff = max(abs(a - b) for a, b in zip(one["loss_per_epoch"], two["loss_per_epoch"], strict=True))
    result = {"command": "python benchmarks/ddp_speed.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
              "data": {"images": args.images, "pairs": args.images * args.captions, "dim": args.dim,
                       "global_batch": args.batch_size, "epochs": args.epochs},
              "one_process": one, "two_processes": two,
              "speedup": round(two["steps_per_s"] / one["steps_per_s"], 3),
              "max_loss_difference": diff, "cpus": os.cpu_count(), "load_1min_after": os.getloadavg()[0],
              "torch": torch.__version__,
              "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
