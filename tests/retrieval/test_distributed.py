"""Data-parallel retrieval training with 2 CPU processes over gloo on loopback.

Spawned with ``torch.multiprocessing.spawn`` (and once through the real ``torchrun``):

* the loss and the gradients of 2 processes, each holding half of a global batch, equal one
  process on the concatenated batch, for every loss of the registry;
* the masks hold across ranks: the batch puts captions of one image, and one text, on both
  ranks, and those pairs are never each other's negatives (one process's loss is only met if
  they are masked; a rank-local loss differs);
* the parameters stay in sync after steps, with dropout (each rank its own masks);
* a killed run resumes on both ranks and ends with the weights of an uninterrupted one;
* ``torchrun --standalone --nproc_per_node 2 -m emit retrieval train`` trains, is killed, and
  the same command resumes it to the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from emit import distributed
from emit.data.synthetic import make_shapes
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.encoders.registry import build_encoder
from emit.retrieval.layout import CHECKPOINT
from emit.retrieval.losses.batch import stopwords
from emit.retrieval.losses.registry import list_losses
from emit.retrieval.mining import mine_negatives
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs
from emit.retrieval.train import (
    global_task_loss,
    new_projection,
    new_state,
    prepare_tasks,
    task_loss,
    train_one_epoch,
    train_retrieval,
    train_step,
)
from emit.text.vectors import WordVectors

WORLD = 2
N_IMAGES = 8
WORDS = [f"w{i}" for i in range(N_IMAGES)] + ["the", "a", "red", "blue"]
# The global batch of 8 pairs: rank 0 holds pairs 0-3, rank 1 pairs 4-7. Image 0 and image 1 have
# captions on both ranks; pair 6's text is pair 2's, on another image (a click query fits many).
IMAGES = np.array([0, 1, 2, 3, 0, 1, 4, 5])
TEXTS = ["the w0 red", "a w1", "w2 blue", "the w3", "a w0 red", "w1", "w2 blue", "the w5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, port: int, fn, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, *args) -> None:
    """Run ``fn(rank, *args)`` in 2 processes of one gloo group; a failure in either fails the test."""
    mp.spawn(_entry, args=(free_port(), fn, args), nprocs=WORLD, join=True)


def data(seed: int = 0) -> tuple[np.ndarray, WordVectors]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((N_IMAGES, 6)).astype(np.float32)
    vectors = WordVectors.from_words(WORDS, rng.standard_normal((len(WORDS), 4)).astype(np.float32),
                                     source="tiny")
    return feats, vectors


def config(**kw) -> RetrievalConfig:
    options = {"encoder": "lstm", "lr_schedule": "constant",
               "hidden": 8, "num_layers": 1, "dropout": 0.0, "batch_size": 8, "epochs": 4, "lr": 1e-2,
               "val_fraction": 0.0, "n_negatives": 3, "margin": 1.0, "loss": "patr", "mining": "any",
               "normalise_images": False, "image_projection": True, "tasks": "titles", **kw}
    return RetrievalConfig(**options).validate()


def setup_state(loss: str):
    """The same fresh model, optimiser and task on every process (seeded); a margin wide enough
    that every mined negative is inside it, so the hinges, and the mining, count."""
    feats, vectors = data()
    cfg = config(loss=loss, margin=25.0)
    torch.manual_seed(0)
    encoder = build_encoder(cfg, TEXTS, feats.shape[1], vectors)
    state = new_state(cfg, encoder, new_projection(cfg, feats.shape[1]), cfg.margin)
    task = prepare_tasks({"titles": Pairs(TEXTS, IMAGES)}, cfg)[0]
    return state, torch.from_numpy(feats), task


def one_step(loss: str, idx: np.ndarray) -> dict:
    state, feats, task = setup_state(loss)
    value, _ = train_step(state, feats, [(task, idx)], lr=1e-2, epoch=0)
    return {"loss": value, "grads": [p.grad.clone() for p in state.params],
            "params": [p.detach().clone() for p in state.params]}


# --------------------------------------------------------------------------- workers (in the children)


def _worker(rank: int, out: Path) -> None:
    """Everything the in-process tests check, in one spawn of 2 ranks."""
    results = {loss: one_step(loss, np.arange(len(IMAGES))[distributed.shard(len(IMAGES))])
               for loss in list_losses()}
    # The masks, directly: mine over the gathered batch as the loss does, from this rank's anchors.
    state, feats, task = setup_state("patr")
    own = np.arange(len(IMAGES))[distributed.shard(len(IMAGES))]
    rows = torch.from_numpy(IMAGES[own])
    text = distributed.gather_with_grad(state.encoder.encode([TEXTS[i] for i in own]))
    image = distributed.gather_constant(feats[rows])
    all_rows = distributed.gather_constant(rows)
    tokens = distributed.gather_objects([task.tokens[i] for i in own])
    neg, valid = mine_negatives(text, image, tokens, all_rows, 3, "any", stopwords=stopwords(state.config))
    results["negatives"] = {int(i): [int(all_rows[j]) for j, ok in zip(neg[i], valid[i], strict=True) if ok]
                            for i in own}
    results["gathered_rows"] = all_rows.tolist()
    # The loss with everything gathered (rows, tokens, weights too) is the loss the loop computes
    # from gathered pair indices.
    for loss in ("infonce", "patr"):
        state, feats, task = setup_state(loss)
        text = state.encoder.encode([TEXTS[i] for i in own])
        image = state.projection(feats[rows])
        weights = torch.from_numpy(task.weights[own]).float()
        tokens = [task.tokens[i] for i in own]
        _, value = global_task_loss(text, image, rows, tokens, weights, state.config, state.margin)
        results[f"gathered_{loss}"] = float(value)
    torch.save(results, out / f"step{rank}.pt")
    _epoch_worker(rank, out)
    _resume_worker(rank, out)


def _epoch_worker(rank: int, out: Path) -> None:
    feats, vectors = data()
    cfg = config(num_layers=2, dropout=0.5, loss="infonce", epochs=2)  # dropout: each rank its own masks
    torch.manual_seed(0)
    encoder = build_encoder(cfg, TEXTS, feats.shape[1], vectors)
    state = new_state(cfg, encoder, new_projection(cfg, feats.shape[1]), cfg.margin)
    distributed.broadcast_parameters([state.encoder, state.projection])
    tasks = prepare_tasks({"titles": Pairs(TEXTS * 3, np.tile(IMAGES, 3))}, cfg)
    records = [train_one_epoch(state, torch.from_numpy(feats), tasks, e) for e in range(2)]
    torch.save({"params": [p.detach().clone() for p in state.params], "records": records},
               out / f"epoch{rank}.pt")


class Killed(Exception):
    pass


def _stop_after(n: int):
    def hook(epoch: int, record: dict) -> None:
        if epoch == n:
            raise Killed
    return hook


def resume_data() -> tuple[Pairs, Pairs]:
    return Pairs(TEXTS * 2, np.tile(IMAGES, 2)), Pairs(TEXTS, IMAGES, np.arange(1.0, 9.0))


def resume_config() -> RetrievalConfig:
    return config(tasks="multitask", loss="patr", epochs=4, lr_schedule="cosine", margin=25.0)


def _resume_worker(rank: int, out: Path) -> None:
    feats, vectors = data()
    titles, clicks = resume_data()
    cfg = resume_config()
    whole = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=out / "whole", progress=False)
    try:
        train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=out / "killed", progress=False,
                        on_epoch=_stop_after(2))
        raise AssertionError("the hook did not stop the run")
    except Killed:
        pass
    left = (out / "killed" / CHECKPOINT).is_file()
    distributed.barrier()  # every rank has looked before any rank resumes
    ran: list[int] = []
    resumed = train_retrieval(feats, titles, clicks, cfg, vectors=vectors, out=out / "killed", progress=False,
                              on_epoch=lambda e, r: ran.append(e))
    torch.save({"checkpoint_left": left, "ran": ran, "resumed_from": resumed.info["resumed_from"],
                "whole": _states(whole), "resumed": _states(resumed),
                "losses": [r["loss"] for r in resumed.info["history"]],
                "whole_losses": [r["loss"] for r in whole.info["history"]]}, out / f"resume{rank}.pt")


def _states(model: RetrievalModel) -> dict[str, torch.Tensor]:
    out = {f"encoder.{k}": v.clone() for k, v in model.encoder.state_dict().items()}
    if model.projection is not None:
        out |= {f"projection.{k}": v.clone() for k, v in model.projection.state_dict().items()}
    return out


# --------------------------------------------------------------------------- tests (in the parent)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One spawn of 2 ranks for every in-process check (a spawn costs seconds of imports)."""
    out = tmp_path_factory.mktemp("ddp")
    spawn(_worker, out)
    return out


@pytest.fixture(scope="module")
def two_ranks_one_step(two_ranks: Path) -> list[dict]:
    return [torch.load(two_ranks / f"step{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("loss", list_losses())
def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks_one_step, loss: str) -> None:
    one = one_step(loss, np.arange(len(IMAGES)))
    for got in two_ranks_one_step:
        r = got[loss]
        assert r["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
        for a, b in zip(r["grads"], one["grads"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        for a, b in zip(r["params"], one["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # one step later the two ranks hold the very same parameters
    a, b = (r[loss]["params"] for r in two_ranks_one_step)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("loss", ["infonce", "patr", "vse"])
def test_a_rank_local_loss_would_differ(loss: str) -> None:
    # the equality above is not trivially met: each half alone gives another loss
    one = one_step(loss, np.arange(len(IMAGES)))
    state, feats, task = setup_state(loss)
    halves = []
    for idx in (np.arange(4), np.arange(4, 8)):
        rows = torch.from_numpy(IMAGES[idx])
        image = state.projection(feats[rows])
        text = state.encoder.encode([TEXTS[i] for i in idx])
        halves.append(float(task_loss(text, image, rows, [task.tokens[i] for i in idx], torch.ones(4),
                                      state.config, state.margin).detach()))
    assert np.mean(halves) != pytest.approx(one["loss"], rel=1e-3)


def test_gathering_rows_tokens_and_weights_gives_the_same_loss(two_ranks_one_step) -> None:
    for loss in ("infonce", "patr"):
        one = one_step(loss, np.arange(len(IMAGES)))
        for got in two_ranks_one_step:
            assert got[f"gathered_{loss}"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)


def test_masks_hold_across_ranks(two_ranks_one_step) -> None:
    for got in two_ranks_one_step:
        assert got["gathered_rows"] == IMAGES.tolist()  # the ids of the whole global batch, in order
        for i, negatives in got["negatives"].items():
            assert negatives, f"pair {i} found no negative"
            assert IMAGES[i] not in negatives  # never a caption of its own image, whichever rank holds it
    # pair 4 (rank 1) shows image 0, whose other caption, pair 0, sits on rank 0
    assert 0 not in two_ranks_one_step[1]["negatives"][4]


def test_parameters_stay_in_sync_with_dropout(two_ranks: Path) -> None:
    tmp_path = two_ranks
    a, b = (torch.load(tmp_path / f"epoch{r}.pt", weights_only=False) for r in range(WORLD))
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"], strict=True))
    assert a["records"] == b["records"]  # the global loss and pair counts, the same on every rank
    assert a["records"][0]["pairs_titles"] == 3 * len(IMAGES) and a["records"][0]["steps"] == 3


def test_a_killed_run_resumes_on_every_rank(two_ranks: Path) -> None:
    tmp_path = two_ranks
    ranks = [torch.load(tmp_path / f"resume{r}.pt", weights_only=False) for r in range(WORLD)]
    for got in ranks:
        assert got["checkpoint_left"] and got["ran"] == [3, 4] and got["resumed_from"] == 2
        assert got["losses"] == got["whole_losses"]
        assert got["whole"].keys() == got["resumed"].keys()
        assert all(torch.equal(got["whole"][k], got["resumed"][k]) for k in got["whole"])
    assert all(torch.equal(ranks[0]["resumed"][k], ranks[1]["resumed"][k]) for k in ranks[0]["resumed"])
    # and rank 0 wrote the run, which loads with those weights
    saved = _states(RetrievalModel.load(tmp_path / "killed"))
    assert all(torch.equal(saved[k], ranks[0]["resumed"][k]) for k in saved)
    assert not (tmp_path / "killed" / CHECKPOINT).exists()
    # and the 2-process run is, within rounding, the 1-process run on the same global batches
    feats, vectors = data()
    single = _states(train_retrieval(feats, *resume_data(), resume_config(), vectors=vectors, progress=False))
    for k, v in single.items():
        torch.testing.assert_close(ranks[0]["whole"][k], v, rtol=1e-4, atol=1e-5)


def test_a_batch_that_does_not_split_is_refused(monkeypatch) -> None:
    from emit.problems import EmitError

    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # as if in a group of 2
    feats, vectors = data()
    with pytest.raises(EmitError, match="use a multiple of 2"):
        train_retrieval(feats, Pairs(TEXTS, IMAGES), None, config(batch_size=7), vectors=vectors,
                        progress=False)


# --------------------------------------------------------------------------- the real torchrun


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_trains_is_killed_and_resumes(tmp_path) -> None:
    shapes = make_shapes(tmp_path)  # emit's generated shapes: images, captions and word vectors
    out = tmp_path / "runs" / "r1"
    epochs = 20
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", "-m", "emit", "retrieval", "train",
           "--titles", str(shapes["titles"]), "--tasks", "titles", "--out", str(out),
           "--backbone", "colour-hist", "--encoder", "lstm", "--vectors", str(shapes["vectors"]),
           "--hidden", "8",
           "--num-layers", "1", "--epochs", str(epochs), "--batch-size", "8", "--val-fraction", "0",
           "--loss", "patr", "--cache-dir", str(tmp_path / "cache"), "-q", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Killed once its first checkpoint is down ...
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / CHECKPOINT).is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if not (out / CHECKPOINT).is_file():  # say why: emit's own errors first, then the tail
            text = first.communicate()[0].decode()
            errors = [line for line in text.splitlines() if "ERROR" in line or "Error:" in line]
            pytest.fail("\n".join(errors[:20]) + "\n...\n" + text[-2000:])
    finally:
        if first.poll() is None:
            # torchrun passes a SIGTERM on to its workers (they run in their own sessions)
            first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert (out / CHECKPOINT).is_file() and not (out / "retrieval.json").exists()
    # ... the same command resumes it and finishes.
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    model = RetrievalModel.load(out)
    assert model.info["resumed_from"] >= 1 and len(model.info["history"]) == epochs
    assert not (out / CHECKPOINT).exists()
    assert model.text_vectors(["a red circle"]).shape == (1, model.encoder.out_dim)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


# --------------------------------------------------------------------------- pairing fine-tuning


class _StopAtEpoch2:
    """tqdm stand-in that kills the run when epoch 2 starts (after epoch 1's checkpoint)."""

    def __init__(self, it, *args, desc: str = "", **kw) -> None:
        if desc.startswith("fine-tune epoch 2/"):
            raise Killed
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, **kw) -> None:
        pass


def _finetune_worker(rank: int, root: Path) -> None:
    from emit.config import PairingConfig
    from emit.data.products import read_products
    from emit.pairing import finetune
    from emit.problems import ProblemLog
    from emit.vision.backbones import create_backbone

    steps: list[int] = []
    real_step = torch.optim.Adam.step
    torch.optim.Adam.step = lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1]
    products, _ = read_products(root / "train")
    config = PairingConfig(backbone="efficientnet-lite0", finetune_epochs=2, batch_size=4, min_count=1)
    real_tqdm = finetune.tqdm
    finetune.tqdm = _StopAtEpoch2
    try:
        finetune.finetune_backbone(products, create_backbone("efficientnet-lite0"), config, root / "run",
                                   problems=ProblemLog(), progress=False)
        raise AssertionError("the run was not stopped")
    except Killed:
        pass
    finally:
        finetune.tqdm = real_tqdm
    first = len(steps)
    left = (root / "run" / finetune.CHECKPOINT).is_file()
    distributed.barrier()
    steps.clear()
    tuned = finetune.finetune_backbone(products, create_backbone("efficientnet-lite0"), config, root / "run",
                                       problems=ProblemLog(), progress=False)
    weights = [p.detach().clone() for p in tuned.model.parameters()]
    torch.save({"first": first, "resumed": len(steps), "left": left, "weights": weights},
               root / f"finetune{rank}.pt")


def test_pairing_fine_tuning_stays_in_sync_and_resumes_on_both_ranks(tmp_path) -> None:
    from emit.data.synthetic import make_products
    from emit.pairing.finetune import CHECKPOINT as FT_CHECKPOINT
    from emit.pairing.finetune import TUNED_WORK

    make_products(tmp_path / "train", 2, seed=5, size=64)
    spawn(_finetune_worker, tmp_path)
    a, b = (torch.load(tmp_path / f"finetune{r}.pt", weights_only=False) for r in range(WORLD))
    for got in (a, b):
        # epoch 1 ran, then the resumed run did epoch 2 alone: as many steps again
        assert got["left"] and got["first"] > 0 and got["resumed"] == got["first"]
    assert all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"], strict=True))
    assert (tmp_path / "run" / TUNED_WORK).is_file() and not (tmp_path / "run" / FT_CHECKPOINT).exists()


# --------------------------------------------------------------------------- the helpers alone


def test_without_a_launcher_everything_is_one_process(monkeypatch) -> None:
    from emit.problems import EmitError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group() as joined:
        assert not joined and distributed.world_size() == 1 and distributed.is_main()
    x = torch.arange(6.0, requires_grad=True)
    assert distributed.gather_with_grad(x) is x and distributed.gather_objects([["a"]]) == [["a"]]
    assert distributed.shard(8) == slice(0, 8) and distributed.shard(8, 1, 2) == slice(4, 8)
    with pytest.raises(ValueError, match="does not split"):
        distributed.shard(7, 0, 2)
    assert distributed.rank_seed(5) == 5  # rank 0 keeps a single process's seeds
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
    # a half-set launch environment names the launcher to use
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(EmitError, match="torchrun --nproc_per_node"), distributed.process_group():
        pass
    monkeypatch.setenv("EMIT_DIST_TIMEOUT_MINUTES", "soon")
    with pytest.raises(EmitError, match="EMIT_DIST_TIMEOUT_MINUTES"):
        distributed.timeout()
