"""Artefacts written by an earlier emit (commit 884fa63, before folder commits and manifests)
still load and give the same answers: a pairing model, its feature cache, a retrieval run and
an index. ``tests/fixtures/make_legacy_fixtures.sh`` wrote them with that commit's code."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from emit.cli import main
from emit.pairing.model import PairingModel
from emit.retrieval.model import RetrievalModel
from emit.retrieval.search import IndexSearcher

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_884fa63"
WRITTEN_AT = "/tmp/legacy/out/"  # where the generator ran: the index records absolute image paths


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    copy = tmp_path / "legacy"
    shutil.copytree(FIXTURE, copy)  # loading may tidy a folder: never the repository's copy
    return copy


def _cached_rows(cache: Path) -> int:
    (db,) = cache.glob("*.sqlite")
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from features").fetchone()[0]


def test_an_old_pairing_model_and_its_cache_give_the_same_predictions(legacy: Path) -> None:
    PairingModel.load(legacy / "pairing-model")
    rows = _cached_rows(legacy / "cache")
    out = legacy / "again" / "final_json.json"
    assert main(["pair", "predict", str(legacy / "pairing-model"), str(legacy / "products" / "input"),
                 "--out", str(out), "--cache-dir", str(legacy / "cache"), "-q", "--threads", "1"]) == 0
    old = json.loads((legacy / "predictions" / "final_json.json").read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8")) == old
    assert _cached_rows(legacy / "cache") == rows  # every feature came from the old cache


def test_an_old_retrieval_run_and_index_give_the_same_results(legacy: Path) -> None:
    model = RetrievalModel.load(legacy / "retrieval-run")
    searcher = IndexSearcher.open(legacy / "index", model=legacy / "retrieval-run")
    assert searcher.model.identity() == model.identity()
    old = json.loads((legacy / "search.json").read_text(encoding="utf-8"))
    got = searcher.search(old["query"], top=len(old["results"]))
    want = [(r["id"].removeprefix(WRITTEN_AT), r["score"]) for r in old["results"]]
    assert [r["id"].removeprefix(WRITTEN_AT) for r in got["results"]] == [w[0] for w in want]
    assert [r["score"] for r in got["results"]] == pytest.approx([w[1] for w in want], abs=1e-5)
