"""Retrieval commands given bad input: a deeply nested JSON-lines record, a bad --top.

Each bad record is reported and skipped, the good ones are evaluated; a bad flag is refused
by name before anything is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss", reason="faiss-cpu not installed")

from emit.cli import main

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-retrieval")
    (root / "images").mkdir()
    titles = []
    for colour, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(root / "images" / f"{colour}.png")
        titles += [{"image": f"images/{colour}.png", "text": f"a {colour} square"},
                   {"image": f"images/{colour}.png", "text": f"{colour}"}]
    (root / "titles.jsonl").write_text("\n".join(json.dumps(t) for t in titles) + "\n")
    rng = np.random.default_rng(0)
    words = [*COLOURS, "a", "square"]
    (root / "vectors.txt").write_text("\n".join(w + " " + " ".join(f"{v:.3f}" for v in rng.standard_normal(4))
                                                for w in words) + "\n")
    code = main(["retrieval", "train", "--titles", str(root / "titles.jsonl"), "--tasks", "titles",
                 "--out", str(root / "run"), "--backbone", "colour-hist",
                 "--encoder", "lstm", "--vectors", str(root / "vectors.txt"),
                 "--hidden", "8", "--num-layers", "1", "--epochs", "2", "--batch-size", "4",
                 "--val-fraction", "0", "--cache-dir", str(root / "cache"), "-q", "--threads", "1"])
    assert code == 0
    assert main(["index", "build", str(root / "run"), str(root / "images"), "--out", str(root / "idx"),
                 "--cache-dir", str(root / "cache"), "-q", "--threads", "1"]) == 0
    return {"root": root, "run": root / "run", "titles": root / "titles.jsonl", "cache": root / "cache",
            "idx": root / "idx"}


def test_evaluate_reports_a_deeply_nested_record_and_scores_the_rest(run_dir, tmp_path, capsys) -> None:
    lines = run_dir["titles"].read_text().splitlines()
    lines.insert(3, '{"image": "images/red.png", "text": ' + "[" * 1000 + "]" * 1000 + "}")
    captions = run_dir["root"] / "deep.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    code = main(["retrieval", "evaluate", str(run_dir["run"]), "--captions", str(captions),
                 "--cache-dir", str(run_dir["cache"]), "--out", str(tmp_path / "eval"), "-q",
                 "--threads", "1"])
    assert code == 0  # before the fix: RecursionError, exit 1, no report
    summary = json.loads(capsys.readouterr().out)
    assert summary["captions"] == 8 and summary["problems"] == 1
    report = json.loads((tmp_path / "eval.json").read_text())
    (problem,) = report["problems"]
    assert problem["where"] == str(captions) and problem["record"] == "line 4"
    assert "nested deeper than Python's parser allows" in problem["what"] and problem["fix"]


@pytest.mark.parametrize("top", ["0", "-3", "ten"])
def test_search_top_names_the_flag(run_dir, top, capsys, caplog) -> None:
    # before the fix: the index was opened and searched, then "k must be >= 1, got 0"
    with pytest.raises(SystemExit) as info:
        main(["search", str(run_dir["idx"]), "red", "--top", top])
    assert info.value.code == 2
    err = capsys.readouterr().err + caplog.text
    assert "argument --top:" in err and "at least 1" in err
    assert "k must" not in err
    assert main(["search", str(run_dir["idx"]), "red", "--top", "1"]) == 0  # the same index works
