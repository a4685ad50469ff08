"""``emit features extract --engine ray`` on a real one-machine Ray cluster (Ray's local mode is
gone): the same shards as the local engine, bad images as rows, and a stopped job that resumes.

Kept to few jobs: starting the cluster and an actor pool takes seconds each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from scale_helpers import make_images, read_rows, shard_files

from emit.scale.jobs import ExtractJob, extract_to_shards
from emit.scale.shards import Partition

# Ray Data's own DataContext warns about its deprecated fields when it is copied: not emit's
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root)


@pytest.fixture(scope="module")
def local_out(images: tuple[Path, dict[str, list[Path]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "feats"
    extract_to_shards(job(images[0], out, "local"))
    return out


def job(root: Path, out: Path, engine: str, **kw: object) -> ExtractJob:
    return ExtractJob(inputs=[root], out=out, engine=engine, backbone="colour-hist", device="cpu",
                      shard_size=3, batch_size=2, workers=2, threads=1, progress=False, **kw)  # type: ignore[arg-type]


def assert_same_shards(ray_out: Path, local_out: Path) -> None:
    ray_files, local_files = shard_files(ray_out), shard_files(local_out)
    assert list(ray_files) == list(local_files)  # the same shard layout
    for name, table in ray_files.items():
        other = local_files[name]
        assert table.schema.metadata == other.schema.metadata, name
        for column in ("path", "sha256", "error"):
            assert table.column(column).to_pylist() == other.column(column).to_pylist(), (name, column)
        pairs = zip(table.column("features").to_pylist(), other.column("features").to_pylist(), strict=True)
        for a, b in pairs:
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ray_writes_the_local_engines_rows_with_bad_images_as_error_rows(
        cluster: None, images: tuple[Path, dict[str, list[Path]]], local_out: Path, tmp_path: Path) -> None:
    root, kinds = images
    out = tmp_path / "feats"
    summary = extract_to_shards(job(root, out, "ray"))
    paths = read_rows(out).column("path").to_pylist()
    assert paths == sorted(str(p) for p in kinds["good"] + kinds["bad"])  # every input exactly once
    assert summary["errors"] == 2 and summary["rows"] == len(paths) and summary["shards_written"] == 4
    errors = dict(zip(paths, read_rows(out).column("error").to_pylist(), strict=True))
    assert "truncated" in errors[str(kinds["bad"][0])] and "not an image" in errors[str(kinds["bad"][1])]
    assert_same_shards(out, local_out)


class Stop(Exception):
    pass


def test_a_stopped_ray_job_resumes_without_duplicating_or_losing_rows(
        cluster: None, images: tuple[Path, dict[str, list[Path]]], local_out: Path, tmp_path: Path) -> None:
    root, _ = images
    out = tmp_path / "feats"

    def stop_after_one(part: Partition) -> None:
        raise Stop

    with pytest.raises(Stop):
        extract_to_shards(job(root, out, "ray", on_shard=stop_after_one))
    assert len(list(out.glob("part-*.parquet"))) == 1
    (out / "part-00000.parquet").unlink(missing_ok=True)  # and one more lost, whichever it was
    kept = {p.name: pq.read_table(p) for p in out.glob("part-*.parquet")}
    summary = extract_to_shards(job(root, out, "ray"))
    assert summary["shards_skipped"] == len(kept) and summary["shards_written"] == 4 - len(kept)
    assert_same_shards(out, local_out)


def test_pair_predict_on_ray_writes_the_local_final_json(cluster: None, tmp_path: Path) -> None:
    import json

    from emit.config import PairingConfig
    from emit.data.synthetic import make_products
    from emit.pairing.jobs import predict_job, train_job
    from emit.pairing.review_queue import read_review_queue
    from emit.scale.predict import predict_job_ray

    train = make_products(tmp_path / "train", 24, seed=1, size=48)
    products = make_products(tmp_path / "input", 10, seed=2, size=48, with_truth=False)
    first = next(p for p in sorted(products.iterdir()) if p.is_dir())
    sorted(first.glob("*.jpg"))[1].write_bytes(b"not a jpeg")  # an unreadable image: a problem, no tag
    cache = tmp_path / "cache"
    train_job(train, tmp_path / "model", PairingConfig(max_epochs=10, bag_size=2), cache_dir=cache,
              progress=False)
    local = predict_job(tmp_path / "model", products, tmp_path / "local" / "final_json.json",
                        cache_dir=cache, progress=False, review_below=0.9)
    spread = predict_job_ray(tmp_path / "model", products, tmp_path / "ray" / "final_json.json",
                             cache_dir=tmp_path / "cache-ray", progress=False, workers=2,
                             products_per_batch=3, review_below=0.9)
    assert spread["products"] == local["products"] == 10 and spread["images"] == local["images"]
    assert spread["problems"] == local["problems"] == 1
    for name in ("final_json.json", "final_json.baseline.json", "final_json.problems.json",
                 "final_json.confidence.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    # the review queue: the same products, confidences and tags; only the file it sits beside differs
    queues = {engine: read_review_queue(tmp_path / engine / "final_json.review.json")
              for engine in ("local", "ray")}
    assert queues["ray"].products == queues["local"].products
    assert queues["ray"].predictions == (tmp_path / "ray" / "final_json.json").resolve()
    assert spread["review_products"] == local["review_products"] == len(queues["local"].products) >= 1
    confidence = json.loads((tmp_path / "ray" / "final_json.confidence.json").read_text(encoding="utf-8"))
    assert confidence[first.name] == 0.0  # its unreadable image leaves it untagged: never sure
    assert queues["ray"].products[0].product_id == first.name
    # the command line's --engine ray is this job (the features are cached by now: a quick run)
    from emit.cli import main

    assert main(["pair", "predict", str(tmp_path / "model"), str(products), "-q", "--engine", "ray",
                 "--workers", "2", "--out", str(tmp_path / "cli" / "final_json.json"),
                 "--cache-dir", str(tmp_path / "cache-ray"), "--review-below", "0.9"]) == 0
    assert (tmp_path / "cli" / "final_json.json").read_bytes() == (tmp_path / "local" / "final_json.json"
                                                                   ).read_bytes()
    assert (tmp_path / "cli" / "final_json.confidence.json").read_bytes() == (
        tmp_path / "local" / "final_json.confidence.json").read_bytes()
    assert read_review_queue(tmp_path / "cli" / "final_json.review.json").products == queues["local"].products


def test_an_actor_no_node_can_hold_is_refused_instead_of_waiting_for_ever(
        cluster: None, images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    """A GPU per worker on a cluster without GPUs used to hang the job; it is now one clear error,
    before any shard is written."""
    from emit.problems import EmitError

    root, _ = images
    out = tmp_path / "feats"
    with pytest.raises(EmitError, match="--gpus-per-worker 1: no node of the Ray cluster has 1 GPU"):
        extract_to_shards(job(root, out, "ray", gpus_per_worker=1.0))
    assert not list(out.glob("part-*.parquet"))
