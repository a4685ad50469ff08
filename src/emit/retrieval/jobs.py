"""Whole retrieval jobs on files: what ``emit retrieval ...``, ``emit index build`` and ``emit search`` run.

Each job reads its inputs (bad records are reported and skipped), extracts image features with
the model's backbone through the shared on-disk cache, writes its outputs atomically, and
returns a small summary dict for the command line to print.

An index folder holds the FAISS index of the images (:mod:`emit.retrieval.index`, whose
manifest records the backbone's and the model's identities), optionally ``texts/``, an index of
caption texts for image -> text search, and ``retrieval_index.json``, which names the model
folder that built it, so ``emit search IDX "text"`` finds the text encoder by itself
(:class:`emit.retrieval.search.IndexSearcher` opens it). :func:`build_index_from_features_job`
builds the image index from the Parquet shards of ``emit features extract`` instead, past one
machine's RAM (:mod:`emit.retrieval.ondisk`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from emit import distributed
from emit.commit import folder_commit, write_problems
from emit.data.captions import Caption, image_indices, read_captions
from emit.data.images import IMAGE_SUFFIXES
from emit.devices import local_device, resolve_device
from emit.files import atomic_write_json
from emit.problems import EmitError, ProblemLog
from emit.retrieval.config import RetrievalConfig, resolve_tasks
from emit.retrieval.encoders.sentence import QUERY_PRECISION_ENV
from emit.retrieval.evaluate import evaluate_captions, write_evaluation
from emit.retrieval.hubness import (
    DEFAULT_BETA,
    DEFAULT_DIRECTION,
    HubnessBank,
    check_beta,
    corrects,
    describe,
    index_correction,
    resolve,
)
from emit.retrieval.index import (
    IDS_FILE,
    INDEX_FILE,
    KINDS,
    LISTS_FILE,
    MANIFEST_FILE,
    SearchIndex,
    build_index,
)
from emit.retrieval.layout import CURVES
from emit.retrieval.model import RetrievalModel, model_backbone
from emit.retrieval.ondisk import BuildSettings, ImageSide, backbone_key, build_from_features
from emit.retrieval.pairs import Pairs
from emit.retrieval.search import INDEX_MODEL_FILE, TEXTS_DIR, IndexSearcher, check_query, check_target
from emit.retrieval.train import check_global_batch, train_retrieval
from emit.split import in_validation
from emit.text.vectors import WordVectors
from emit.vision.backbones import Backbone, create_backbone
from emit.vision.features import default_cache_dir, extract_features

log = logging.getLogger("emit")

PathLike = str | os.PathLike[str]


def _cache(cache_dir: PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def _features(paths: Sequence[Path], backbone: Backbone, cache_dir: PathLike | None, problems: ProblemLog,
              progress: bool, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    return extract_features(paths, backbone, cache_dir=_cache(cache_dir), problems=problems,
                            progress=progress, device=device)


# --------------------------------------------------------------------------- train


def split_key(path: Path) -> str:
    """The validation group of an image.

    Photos in the Taobao product layout (``<pid>/<pid>_<k>.jpg``) are near-duplicates of one
    product, so they are held out together; any other image is its own group. Keys use the
    folder and file name, not the absolute path, so moving the data does not move the split.
    """
    parent = path.parent.name
    if parent and path.stem.startswith(f"{parent}_"):
        return f"product:{parent}"
    return f"{parent}/{path.name}"


def train_job(titles: PathLike | None, clicks: PathLike | None, out: PathLike, config: RetrievalConfig, *,
              titles_format: str = "auto", clicks_format: str = "clicks", image_root: PathLike | None = None,
              val_titles: PathLike | None = None, val_clicks: PathLike | None = None,
              cache_dir: PathLike | None = None, vectors: WordVectors | None = None,
              progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Read titles and click logs, extract the images' features, train (resumably) into ``out``.

    Started by ``torchrun --nproc_per_node N -m emit retrieval train ...``, the N processes
    join one process group (:mod:`emit.distributed`) and train data-parallel: each rank extracts
    its share of the images into the shared feature cache and then reads them all from it, and
    rank 0 writes the files. ``device`` is where features are extracted and the model trains;
    under torchrun with CUDA, each rank takes the GPU of its ``LOCAL_RANK`` (NCCL).
    """
    config = replace(config.validate(), tasks=resolve_tasks(config.tasks, titles is not None,
                                                            clicks is not None))
    where = local_device(device)
    with distributed.process_group(where):  # gloo on the CPU, NCCL on CUDA
        return _train_job(titles, clicks, out, config, titles_format=titles_format,
                          clicks_format=clicks_format, image_root=image_root, val_titles=val_titles,
                          val_clicks=val_clicks, cache_dir=cache_dir, vectors=vectors, progress=progress,
                          device=str(where))


def _train_job(titles: PathLike | None, clicks: PathLike | None, out: PathLike, config: RetrievalConfig, *,
               titles_format: str, clicks_format: str, image_root: PathLike | None,
               val_titles: PathLike | None, val_clicks: PathLike | None, cache_dir: PathLike | None,
               vectors: WordVectors | None, progress: bool, device: str) -> dict[str, Any]:
    start = time.perf_counter()
    check_global_batch(config)  # before any image is read
    main = distributed.is_main()
    progress = progress and main
    problems = ProblemLog()
    needs = {"titles": config.tasks in ("multitask", "titles"),
             "clicks": config.tasks in ("multitask", "clicks")}
    for name, given in (("titles", titles), ("clicks", clicks)):
        if needs[name] and not given:
            raise EmitError(f"--tasks {config.tasks} needs --{name} FILE")

    def read(path: PathLike | None, fmt: str, used: bool) -> list[Caption]:
        if path is None or not used:
            return []
        caps, _ = read_captions(path, fmt, image_root, problems=problems)
        if not caps:
            raise EmitError(f"{path}: no usable records; see the problems above")
        return caps

    parts = {"titles": read(titles, titles_format, needs["titles"]),
             "clicks": read(clicks, clicks_format, needs["clicks"]),
             "val_titles": read(val_titles, titles_format, needs["titles"]),
             "val_clicks": read(val_clicks, clicks_format, needs["clicks"])}
    everything = [c for caps in parts.values() for c in caps]
    paths, _ = image_indices(everything)
    backbone = create_backbone(config.backbone, weights=config.weights)
    world = distributed.world_size()
    if world > 1:
        # Each rank extracts its share into the shared cache (SQLite, safe for several
        # processes), then every rank reads them all from it: no image is extracted twice.
        _features(paths[distributed.rank()::world], backbone, cache_dir, ProblemLog(), progress, device)
        distributed.barrier()
    feats, ok = _features(paths, backbone, cache_dir, problems, progress, device)
    if not ok.any():
        raise EmitError("none of the images could be read; see the problems above")
    keys = [str(p) for p, good in zip(paths, ok, strict=True) if good]
    row_of = {k: i for i, k in enumerate(keys)}
    pairs = {name: Pairs.from_captions(caps, row_of) if caps else None for name, caps in parts.items()}
    if main:
        write_problems(problems, Path(out) / "train_problems.json")  # now: training may take hours
    model = train_retrieval(feats[ok], pairs["titles"], pairs["clicks"], config, out=out,
                            val_titles=pairs["val_titles"], val_clicks=pairs["val_clicks"],
                            image_keys=[split_key(Path(k)) for k in keys],
                            vectors=vectors, backbone=backbone.identity, progress=progress, device=device)
    if main:
        write_problems(problems, Path(out) / "train_problems.json")
    info = model.info
    return {"model": str(out), "tasks": config.tasks, "encoder": model.config.encoder,
            "pairs": info.get("pairs"), "val_pairs": info.get("val_pairs"), "images": int(ok.sum()),
            "images_unreadable": int((~ok).sum()), "epochs": len(info.get("history", [])),
            "best_epoch": info.get("best_epoch"), "best_val_score": info.get("best_score"),
            "resumed_from": info.get("resumed_from"), "margin": model.margin, "problems": len(problems),
            "curves": str(Path(out) / CURVES), "seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------- evaluate


def held_out_captions(model: RetrievalModel, captions: Sequence[Caption], run: PathLike) -> list[Caption]:
    """The captions of the images ``model`` held out for validation: the same hash of the same
    image keys (:func:`split_key`) with the run's --val-fraction and --seed."""
    how = model.info.get("validation")
    if how != "held_out":
        reasons = {"given": "was validated on files given with --val-titles/--val-clicks; evaluate on those",
                   "none": "held no images out (--val-fraction 0)"}
        why = reasons.get(str(how), "does not record its validation split (trained by an older emit)")
        raise EmitError(f"{run}: --held-out is not possible: the run {why}")
    cfg = model.config
    kept = [c for c in captions if in_validation(split_key(Path(c.image_id)), cfg.val_fraction, cfg.seed)]
    if not kept:
        raise EmitError(f"{run}: none of these captions' images was held out by the run; "
                        "evaluate on the files it was trained on, or drop --held-out")
    return kept


def _bank(run: PathLike, model: RetrievalModel, hubness: str, beta: float) -> HubnessBank | None:
    """The run's hubness bank if ``hubness`` corrects anything (an error names the fix if it has
    none); ``beta`` is checked here too, before any image is read."""
    if resolve(hubness, model.metric) == "none":
        return None
    check_beta(beta)
    return HubnessBank.load(run, model)


def evaluate_job(run: PathLike, captions: PathLike, *, fmt: str = "auto", image_root: PathLike | None = None,
                 cache_dir: PathLike | None = None, out: PathLike | None = None, held_out: bool = False,
                 hubness: str = DEFAULT_DIRECTION, beta: float = DEFAULT_BETA,
                 progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the model in ``run`` on a caption file; writes ``<out>.json`` and ``<out>.png``
    (default ``RUN/eval_<captions name>``). ``held_out`` keeps only the run's validation images.
    ``hubness`` / ``beta`` correct that direction against the run's bank (:mod:`emit.retrieval.hubness`)."""
    start = time.perf_counter()
    resolve_device(device)  # an absent device is said before any work
    model = RetrievalModel.load(run)
    bank = _bank(run, model, hubness, beta)
    problems = ProblemLog()
    caps, _ = read_captions(captions, fmt, image_root, problems=problems)
    if not caps:
        raise EmitError(f"{captions}: no usable captions; see the problems above")
    if held_out:
        caps = held_out_captions(model, caps, run)
    paths, _ = image_indices(caps)
    feats, ok = _features(paths, model_backbone(model), cache_dir, problems, progress, device)
    report = evaluate_captions(model, caps, feats, ok, bank=bank, hubness=hubness, beta=beta)
    report["captions_file"] = str(captions)
    report["held_out_only"] = held_out
    report["run"] = str(run)
    report["problems"] = problems.to_json()
    prefix = Path(out) if out is not None else Path(run) / f"eval_{Path(captions).stem}"
    json_path, png_path = write_evaluation(report, prefix)
    return {"report": str(json_path), "plot": str(png_path), "captions": report["counts"]["captions"],
            "images": report["counts"]["images"], "text_to_image": report["text_to_image"],
            "image_to_text": report["image_to_text"],
            "map_at_r": {k: report["map_at_r"][k]
                         for k in ("R", "relevance", "text_to_image", "image_to_text")},
            "map": {k: report["map"][k] for k in ("text_to_image", "image_to_text")},
            "hubness": report["hubness"], "problems": len(problems),
            "seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------- index


def collect_images(items: Sequence[PathLike], problems: ProblemLog) -> list[Path]:
    """Image files named directly, or found (recursively, by suffix) in the folders named; sorted
    within a folder, duplicates dropped. A missing path is reported and skipped."""
    seen: set[Path] = set()
    files: list[Path] = []
    for item in items:
        path = Path(os.path.abspath(item))
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not found:
                problems.add(path, path.name, "folder holds no image files; skipped",
                             f"give image files ({', '.join(sorted(IMAGE_SUFFIXES))}) or their folders")
        elif path.is_file():
            found = [path]
        else:
            problems.add(path, path.name, "no such file or folder; skipped", "check the path")
            found = []
        for p in found:
            if p not in seen:
                seen.add(p)
                files.append(p)
    return files


def _index_hubness(model: RetrievalModel, hubness: str, texts: PathLike | None) -> str:
    """The correction an index build folds in: ``hubness`` resolved for the model, refusing
    'image_to_text' without a text index, and 'both' narrowed to the images when there is none."""
    hubness = resolve(hubness, model.metric)
    if hubness == "image_to_text" and texts is None:
        raise EmitError("--hubness image_to_text corrects the text index, and there is none; give "
                        "--texts CAPTIONS, or choose text_to_image (the image index), both or none")
    if hubness == "both" and texts is None:
        return "text_to_image"  # no text index to correct: record only what is corrected
    return hubness


def build_index_job(run: PathLike, images: Sequence[PathLike], out: PathLike, *, kind: str = "exact",
                    texts: PathLike | None = None, texts_format: str = "auto",
                    image_root: PathLike | None = None, cache_dir: PathLike | None = None,
                    hubness: str = DEFAULT_DIRECTION, beta: float = DEFAULT_BETA,
                    progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Embed images with the model's backbone (and projection) into a FAISS index in ``out``.

    ``texts`` (a caption file) also builds ``out/texts``, an index of its distinct texts, for
    image -> text search. ``hubness`` folds the correction of that direction into the index of
    its candidates (texts for 'image_to_text', images for 'text_to_image'), against the run's
    bank with ``beta``; each index records what it holds.
    """
    start = time.perf_counter()
    if kind not in KINDS:
        raise EmitError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    resolve_device(device)
    model = RetrievalModel.load(run)
    hubness = _index_hubness(model, hubness, texts)
    bank = _bank(run, model, hubness, beta)
    problems = ProblemLog()
    files = collect_images(images, problems)
    if not files:
        raise EmitError("no image files to index; see the problems above")
    backbone = model_backbone(model)
    feats, ok = _features(files, backbone, cache_dir, problems, progress, device)
    if not ok.any():
        raise EmitError("none of the images could be read; see the problems above")
    ids = [str(f) for f, good in zip(files, ok, strict=True) if good]
    identity = model.identity()
    image_vectors = model.image_vectors(feats[ok])
    index = build_index(image_vectors, ids, kind, model.metric, backbone=backbone.identity, encoder=identity,
                        **index_correction(image_vectors, "images", bank, hubness, beta=beta,
                                           metric=model.metric))
    text_index = None
    if texts is not None:
        caps, _ = read_captions(texts, texts_format, image_root, check_images=False, problems=problems)
        distinct = list(dict.fromkeys(c.text for c in caps))
        if not distinct:
            raise EmitError(f"{texts}: no texts to index; see the problems above")
        text_vectors = model.text_vectors(distinct)
        text_index = build_index(text_vectors, distinct, "exact", model.metric, backbone=backbone.identity,
                                 encoder=identity, **index_correction(text_vectors, "texts", bank, hubness,
                                                                      beta=beta, metric=model.metric))
    out = Path(out)
    write_index_folder(out, index, text_index, run, problems)
    n_texts = 0 if text_index is None else len(text_index)
    return {"index": str(out), "images": len(ids), "images_skipped": len(files) - len(ids),
            "texts": n_texts, "kind": kind, "metric": model.metric, "dim": index.query_dim, "model": str(run),
            "hubness": describe(bank, hubness, beta),
            "problems": len(problems), "seconds": round(time.perf_counter() - start, 1)}


def write_index_folder(out: Path, images: SearchIndex, texts: SearchIndex | None, run: PathLike,
                       problems: ProblemLog) -> None:
    """The image index, the text index (or none: an earlier build's is dropped), the pointer to
    the model and the problems as one commit: a searcher sees one build, never a mix."""
    with folder_commit(out, label="index") as commit:
        images.save(out)
        for name in (LISTS_FILE, IDS_FILE):  # an earlier build from feature shards
            commit.remove(out / name)
        _write_rest(out, commit, texts, run, problems, len(images))


def _write_rest(out: Path, commit: Any, texts: SearchIndex | None, run: PathLike, problems: ProblemLog,
                images: int) -> None:
    """The text index (or its removal), the pointer to the model and the problems, into ``commit``."""
    if texts is not None:
        texts.save(out / TEXTS_DIR)
    else:
        for name in (INDEX_FILE, MANIFEST_FILE):
            commit.remove(out / TEXTS_DIR / name)
    atomic_write_json(out / INDEX_MODEL_FILE, {"model": str(Path(os.path.abspath(run))),
                                               "texts": texts is not None, "images": images})
    write_problems(problems, out / "index_problems.json")


def build_index_from_features_job(run: PathLike, features: PathLike, out: PathLike, *,
                                  settings: BuildSettings | None = None, texts: PathLike | None = None,
                                  texts_format: str = "auto", image_root: PathLike | None = None,
                                  hubness: str = DEFAULT_DIRECTION, beta: float = DEFAULT_BETA
                                  ) -> dict[str, Any]:
    """``emit index build RUN --from-features DIR``: the image index from the Parquet feature
    shards of ``emit features extract`` (:mod:`emit.retrieval.ondisk`: trained on a sample, added
    in parallel processes, merged on disk, opened memory-mapped), through the run's image side.

    Shards of another backbone than the run's are refused before any work; rows with an error
    are skipped. ``texts`` and ``hubness`` work as in :func:`build_index_job`.
    """
    start = time.perf_counter()
    settings = (settings or BuildSettings()).validate()
    model = RetrievalModel.load(run)
    hubness = _index_hubness(model, hubness, texts)
    bank = _bank(run, model, hubness, beta)
    # the identity the run recorded is enough to check the shards: no backbone weights are loaded
    backbone = model.backbone if model.backbone is not None else model_backbone(model).identity
    corrected = bank is not None and corrects(hubness, "images")
    side = ImageSide(str(run), hubness if corrected else "none", float(beta), model.metric)
    problems = ProblemLog()
    identity = model.identity()
    text_index = None
    if texts is not None:
        text_index = _text_index(model, texts, texts_format, image_root, bank, hubness, beta, problems,
                                 backbone)
    out = Path(out)
    with folder_commit(out, label="index") as commit:
        manifest = build_from_features(features, out, side, settings, expect_key=backbone_key(backbone),
                                       backbone=backbone, encoder=identity,
                                       hubness=describe(bank, hubness, beta) if corrected else None,
                                       problems=problems, model=model, bank=bank)
        _write_rest(out, commit, text_index, run, problems, int(manifest["count"]))
    return {"index": str(out), "images": manifest["count"], "shards": manifest["features"]["shards"],
            "texts": 0 if text_index is None else len(text_index), "kind": manifest["kind"],
            "storage": manifest["params"]["storage"], "factory": manifest["params"].get("factory"),
            "metric": model.metric, "dim": manifest["dim"] - (1 if corrected else 0), "model": str(run),
            "hubness": describe(bank, hubness, beta), "workers": manifest["build"]["workers"],
            "build_seconds": manifest["build"]["seconds"], "problems": len(problems),
            "seconds": round(time.perf_counter() - start, 1)}


def _text_index(model: RetrievalModel, texts: PathLike, texts_format: str, image_root: PathLike | None,
                bank: HubnessBank | None, hubness: str, beta: float, problems: ProblemLog,
                backbone: Any) -> SearchIndex:
    caps, _ = read_captions(texts, texts_format, image_root, check_images=False, problems=problems)
    distinct = list(dict.fromkeys(c.text for c in caps))
    if not distinct:
        raise EmitError(f"{texts}: no texts to index; see the problems above")
    text_vectors = model.text_vectors(distinct)
    return build_index(text_vectors, distinct, "exact", model.metric, backbone=backbone,
                       encoder=model.identity(), **index_correction(text_vectors, "texts", bank, hubness,
                                                                    beta=beta, metric=model.metric))


# --------------------------------------------------------------------------- search


def search_job(index_dir: PathLike, text: str | None = None, *, image: PathLike | None = None, top: int = 10,
               target: str = "images", model: PathLike | None = None, cache_dir: PathLike | None = None,
               device: str = "cpu"
               ) -> dict[str, Any]:
    """Search ``index_dir`` with a text or an image; ``target`` 'images' or 'texts' (needs an
    index built with texts). Scores: squared distance (l2, lower is nearer) or cosine (ip)."""
    check_query(text, image)  # before loading anything
    check_target(target)
    # one query: a reduced-precision copy of the sentence model (0.1 s to make) would cost more
    # than it saves, so float unless EMIT_QUERY_PRECISION asks otherwise
    precision = None if os.environ.get(QUERY_PRECISION_ENV) else "float"
    searcher = IndexSearcher.open(index_dir, model, targets=[target], device=device,
                                  query_precision=precision)
    return searcher.search(text, image=image, top=top, target=target, cache_dir=cache_dir)
