"""Crash consistency of every multi-file artefact writer.

Each writer replaces an old artefact with a new one while a wrapper (crash_helpers) sends
SIGKILL right after its n-th rename or fsync, for every n. Loading afterwards must give the
old artefact, the new one, or a clear refusal that names the fix: never a silent mix. The
next write must then succeed and leave no temporaries or journals behind.

The old and new artefacts are built with the *same* settings, so their files have the same
shapes: the case where a mixed folder used to load silently and predict worse.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from crash_helpers import count_steps, kill_at
from emit.config import PairingConfig
from emit.data.products import Product
from emit.files import JOURNAL_SUFFIX, TEMP_SUFFIX, recover_folder
from emit.pairing.jobs import TRAIN_PROBLEMS, write_model_folder, write_predictions
from emit.pairing.model import PairingModel
from emit.pairing.pipeline import ProductDecision, ProductFeatures, train_pairing
from emit.problems import EmitError, ProblemLog
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.hubness import HubnessBank
from emit.retrieval.index import build_index
from emit.retrieval.jobs import write_index_folder
from emit.retrieval.model import RetrievalModel
from emit.retrieval.pairs import Pairs
from emit.retrieval.search import IndexSearcher
from emit.retrieval.train import save_run, train_retrieval
from emit.text.vectors import WordVectors

COLOURS = ["黑色", "白色", "红色", "蓝色"]
DIM = 8


def check_writer(tmp_path: Path, make_old: Callable[[Path], None], write_new: Callable[[Path], None],
                 load: Callable[[Path], Any]) -> Counter:
    """Kill ``write_new`` after each of its steps over a copy of the old artefact; check each result."""
    base = tmp_path / "base"
    make_old(base)
    old = load(_copy(base, tmp_path / "old"))
    reference = _copy(base, tmp_path / "new")
    write_new(reference)
    new = load(reference)
    assert old != new, "the test needs two different artefacts"
    steps = count_steps(lambda: write_new(_copy(base, tmp_path / "count")))
    assert steps >= 3
    outcomes: Counter = Counter()
    for step in range(1, steps + 1):
        work = _copy(base, tmp_path / f"kill{step}")
        assert kill_at(step, lambda w=work: write_new(w)), f"step {step} of {steps} did not kill the writer"
        try:
            got = load(work)
        except EmitError as exc:  # a refusal is allowed, if it says what to do
            assert any(w in str(exc) for w in ("rerun", "train it again", "build it again")), str(exc)
            outcomes["refused"] += 1
        else:
            assert got in (old, new), f"killed after step {step}: the loaded artefact mixes old and new"
            outcomes["old" if got == old else "new"] += 1
        write_new(work)  # the next run: succeeds, and tidies what the killed one left
        assert load(work) == new
        leftovers = [p for p in work.rglob(".*") if p.name.endswith((TEMP_SUFFIX, JOURNAL_SUFFIX))]
        assert not leftovers, f"killed after step {step}: {leftovers} left behind"
    assert outcomes["old"] and outcomes["new"], outcomes  # both sides of the commit point were hit
    return outcomes


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- pairing model


def _products(n: int, seed: int) -> ProductFeatures:
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(0, 1, (len(COLOURS), DIM)).astype(np.float32) * 2
    products, feats, groups, rows = [], [], [], []
    for k in range(n):
        chosen = rng.permutation(len(COLOURS))[:2]
        tags = [COLOURS[c] for c in chosen]
        product_rows = []
        for s in (0, 1, 0):
            product_rows.append(len(feats))
            feats.append(protos[chosen[s]] + rng.normal(0, 0.3, DIM).astype(np.float32))
            groups.append(k)
        rows.append(product_rows)
        products.append(Product(f"p{seed}_{k}", tags, [f"{k}_{i}.jpg" for i in range(3)],
                                [tags[0], tags[1], tags[0]]))
    return ProductFeatures(products, np.stack(feats), np.asarray(groups), rows)


STAND_IN = SimpleNamespace(identity={"name": "stand-in", "weights": "none"}, dim=DIM, name="stand-in",
                           segments=[("stand-in", 0, DIM)])


@pytest.fixture(scope="module")
def pairing_models() -> tuple[PairingModel, PairingModel]:
    config = PairingConfig(backbone="colour-hist", min_count=1, hidden=8, max_epochs=3, patience=2,
                           bag_size=2, val_fraction=0.2)
    models = []
    for seed in (1, 2):
        pf = _products(12, seed)
        models.append(train_pairing(pf.products, config, backbone=STAND_IN, features=pf,  # type: ignore[arg-type]
                                    progress=False))
    return models[0], models[1]


def _one_problem() -> ProblemLog:
    problems = ProblemLog(echo=False)
    problems.add("data/p1/profile.json", "p1", "a problem of the old run", "fix it")
    return problems


@pytest.fixture
def quick_plots(monkeypatch) -> None:
    """Curves drawn as a few bytes: the same atomic write in the same commit, without matplotlib's
    half second per plot in each of the many forked writes."""
    import emit.pairing.jobs as pairing_jobs
    import emit.retrieval.train as retrieval_train

    monkeypatch.setattr(pairing_jobs, "plot_pairing_curves", lambda members: b"png")
    monkeypatch.setattr(retrieval_train, "plot_curves", lambda history, best: b"png")


def test_pairing_model_folder_is_old_new_or_refused(tmp_path, pairing_models, quick_plots) -> None:
    old_model, new_model = pairing_models

    def load(root: Path) -> tuple[str, str, bool]:
        model = PairingModel.load(root / "m")
        tensors = {f"{k}.{n}": v for k, m in enumerate(model.members) for n, v in m.head.state_dict().items()}
        return _digest(tensors), json.dumps(model.vocab.to_json()), (root / "m" / TRAIN_PROBLEMS).exists()

    check_writer(tmp_path, lambda root: write_model_folder(root / "m", old_model, _one_problem()),
                 lambda root: write_model_folder(root / "m", new_model, ProblemLog(echo=False)), load)


# --------------------------------------------------------------------------- retrieval run and index


WORDS = [f"w{i}" for i in range(8)] + ["the", "a"]


def _retrieval_world(seed: int) -> tuple[np.ndarray, WordVectors, Pairs]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((8, 6)).astype(np.float32)
    table = np.random.default_rng(0).standard_normal((len(WORDS), 4)).astype(np.float32)
    vectors = WordVectors.from_words(WORDS, table, source="tiny")
    titles = Pairs([f"{pre} w{i}" for i in range(8) for pre in ("the", "a")], np.repeat(np.arange(8), 2))
    return feats, vectors, titles


@pytest.fixture(scope="module")
def retrieval_models() -> list[tuple[RetrievalModel, np.ndarray, Pairs]]:
    out = []
    for seed in (0, 1):
        feats, vectors, titles = _retrieval_world(seed)
        config = RetrievalConfig(encoder="lstm", tasks="titles", hidden=8, num_layers=1, batch_size=8,
                                 epochs=2, lr=1e-2,
                                 val_fraction=0.0, n_negatives=2, margin=1.0, seed=seed)
        model = train_retrieval(feats, titles, None, config, vectors=vectors, progress=False)
        out.append((model, feats, titles))
    return out


def test_retrieval_run_folder_is_old_new_or_refused(tmp_path, retrieval_models, quick_plots) -> None:
    (old, old_feats, old_titles), (new, new_feats, new_titles) = retrieval_models

    def load(root: Path) -> tuple[bytes, Any]:
        model = RetrievalModel.load(root / "r")
        bank = HubnessBank.load(root / "r", model).identity()
        return model.text_vectors(["the w1", "a w5"]).round(5).tobytes(), bank

    check_writer(tmp_path, lambda root: save_run(root / "r", old, old_feats, {"titles": old_titles}),
                 lambda root: save_run(root / "r", new, new_feats, {"titles": new_titles}), load)


def test_index_folder_is_old_new_or_refused(tmp_path, retrieval_models, quick_plots) -> None:
    model, feats, titles = retrieval_models[0]
    run = tmp_path / "run"
    save_run(run, model, feats, {"titles": titles})
    images = model.image_vectors(feats)
    texts = list(dict.fromkeys(titles.texts))

    def index(rows: slice, prefix: str):
        return build_index(images[rows], [f"{prefix}{i}" for i in range(len(images))][rows], "exact",
                           model.metric, backbone=model.backbone, encoder=model.identity())

    text_index = build_index(model.text_vectors(texts), texts, "exact", model.metric,
                             backbone=model.backbone, encoder=model.identity())

    def load(root: Path) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        searcher = IndexSearcher.open(root / "i")
        found = searcher.indexes.get("texts")
        return tuple(searcher.indexes["images"].ids), None if found is None else tuple(found.ids)

    # the old build has a text index, the new one none: the old texts must not outlive it
    check_writer(tmp_path, lambda root: write_index_folder(root / "i", index(slice(0, 5), "old"), text_index,
                                                           run, _one_problem()),
                 lambda root: write_index_folder(root / "i", index(slice(2, 8), "new"), None, run,
                                                 ProblemLog(echo=False)), load)


# --------------------------------------------------------------------------- predictions


def test_prediction_outputs_are_old_new_or_refused(tmp_path) -> None:
    products = [Product(f"p{k}", ["黑色", "白色"], [f"{k}_0.jpg", f"{k}_1.jpg"], [None, None])
                for k in range(3)]

    def decisions(flip: bool) -> list[ProductDecision]:
        tags = ["白色", "黑色"] if flip else ["黑色", "白色"]
        return [ProductDecision(p.product_id, list(tags), [0.9, 0.9], np.zeros((2, 2)), list(reversed(tags)))
                for p in products]

    def load(root: Path) -> tuple[bytes | None, ...]:
        recover_folder(root)  # what every emit reader and writer of the folder does first
        names = ("final_json.json", "final_json.baseline.json", "final_json.problems.json")
        return tuple((root / n).read_bytes() if (root / n).exists() else None for n in names)

    check_writer(tmp_path,
                 lambda root: write_predictions(root / "final_json.json", products, decisions(False),
                                                _one_problem()),
                 lambda root: write_predictions(root / "final_json.json", products, decisions(True),
                                                ProblemLog(echo=False)), load)


def test_fine_tuned_model_folder_keeps_heads_and_backbone_together(tmp_path, pairing_models,
                                                                   quick_plots) -> None:
    """A model trained with --tune-full-model commits its fine-tuned backbone with its heads:
    killed anywhere, the folder never pairs new heads with the old backbone (or the reverse)."""
    from dataclasses import replace as replace_field

    from emit.pairing.finetune import TUNED_FILE, TUNED_WORK

    def tuned(model: PairingModel) -> PairingModel:
        copy = PairingModel.__new__(PairingModel)
        copy.__dict__.update(model.__dict__)
        copy.config = replace_field(model.config, tune_full_model=True)
        return copy

    old_model, new_model = (tuned(m) for m in pairing_models)

    def write(root: Path, model: PairingModel, backbone: bytes) -> None:
        work = root / "m" / TUNED_WORK  # where fine-tuning leaves the backbone for the commit
        work.parent.mkdir(parents=True, exist_ok=True)
        work.write_bytes(backbone)
        write_model_folder(root / "m", model, ProblemLog(echo=False))

    def load(root: Path) -> tuple[str, bytes]:
        model = PairingModel.load(root / "m")
        tensors = {f"{k}.{n}": v for k, m in enumerate(model.members) for n, v in m.head.state_dict().items()}
        return _digest(tensors), (root / "m" / TUNED_FILE).read_bytes()

    check_writer(tmp_path, lambda root: write(root, old_model, b"old backbone"),
                 lambda root: write(root, new_model, b"new backbone"), load)


def test_evaluation_report_json_and_plot_are_old_new_or_refused(tmp_path, monkeypatch) -> None:
    """``pair evaluate`` writes its JSON report and its plot as one commit: never the numbers of
    one run beside the picture of another."""
    import emit.pairing.report as report_module
    from emit.data.products import write_final_json
    from emit.pairing.jobs import evaluate_job

    # the plot's bytes carry the report they show, so a mix is visible (and no matplotlib per fork)
    monkeypatch.setattr(report_module, "plot_pairing_report",
                        lambda report: json.dumps(report, sort_keys=True, default=str).encode())
    truth_products = [Product(f"p{k}", ["黑色", "白色"], [f"{k}_0.jpg", f"{k}_1.jpg"], ["黑色", "白色"])
                      for k in range(3)]

    def evaluate(root: Path, right: int) -> None:
        truth, pred = root / "truth.json", root / "pred" / "final_json.json"
        pred.parent.mkdir(parents=True, exist_ok=True)
        write_final_json(truth, truth_products, {p.product_id: p.tags for p in truth_products})
        # the first ``right`` products paired correctly, the others swapped
        write_final_json(pred, truth_products, {p.product_id: (p.tags if k < right else p.tags[::-1])
                                                for k, p in enumerate(truth_products)})
        evaluate_job(pred, truth, out=root / "pred" / "report")

    def load(root: Path) -> tuple[bytes, bytes]:
        recover_folder(root / "pred")
        # the files name the folder they were made in: compare them as if made in one place
        report, picture = ((root / "pred" / name).read_text("utf-8").replace(str(root), "ROOT")
                           for name in ("report.json", "report.png"))
        return json.dumps(json.loads(report), sort_keys=True).encode(), picture.encode()

    check_writer(tmp_path, lambda root: evaluate(root, 1), lambda root: evaluate(root, 3), load)
