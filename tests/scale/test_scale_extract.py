"""``emit features extract`` with the local engine: inputs, rows, errors, shards, resuming, cache."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scale_helpers import make_images, read_rows, shard_files

from emit.cli import main
from emit.problems import EmitError
from emit.scale.inputs import expand_inputs
from emit.scale.jobs import ExtractJob, extract_to_shards
from emit.scale.shards import (
    META_BACKBONE,
    META_BACKBONE_KEY,
    META_DIM,
    SUCCESS,
    Partition,
    read_features,
)
from emit.vision.backbones import create_backbone
from emit.vision.features import FeatureCache, extract_features


def job(inputs: list[Path], out: Path, **kw: object) -> ExtractJob:
    kw = {"backbone": "colour-hist", "device": "cpu", "shard_size": 3, "batch_size": 2, "threads": 1,
          "progress": False, **kw}
    return ExtractJob(inputs=inputs, out=out, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root)


# ---- inputs -------------------------------------------------------------------------------


def test_inputs_are_folders_files_and_manifests_sorted_and_each_once(tmp_path: Path) -> None:
    kinds = make_images(tmp_path / "imgs")
    every = sorted(str(p) for p in kinds["good"] + kinds["bad"])
    assert expand_inputs([tmp_path / "imgs"]) == every
    (tmp_path / "list.txt").write_text("# a comment\nimgs/sub0/img0.png\n\nimgs/missing.jpg\n")
    (tmp_path / "list.csv").write_text("path,other\nimgs/sub0/img0.png,1\nimgs/notes.png,2\n")
    manifest = pa.table({"path": ["imgs/truncated.jpg", str(kinds["good"][1])]})
    pq.write_table(manifest, tmp_path / "list.parquet")
    got = expand_inputs([tmp_path / "list.txt", tmp_path / "list.csv", tmp_path / "list.parquet",
                         kinds["good"][2], kinds["good"][2]])
    want = sorted({str(tmp_path / "imgs/sub0/img0.png"), str(tmp_path / "imgs/missing.jpg"),
                   str(tmp_path / "imgs/notes.png"), str(tmp_path / "imgs/truncated.jpg"),
                   str(kinds["good"][1]), str(kinds["good"][2])})
    assert got == want  # relative to the manifest's folder; a listed missing file is kept


def test_a_manifest_without_a_path_column_or_a_missing_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file\na.jpg\n")
    with pytest.raises(EmitError, match=r"m\.csv: the manifest has no 'path' column \(columns: file\)"):
        expand_inputs([tmp_path / "m.csv"])
    with pytest.raises(EmitError, match="nothing-here: no such image file, folder or manifest"):
        expand_inputs([tmp_path / "nothing-here"])


# ---- rows ---------------------------------------------------------------------------------


def test_every_input_once_bad_images_are_error_rows_and_vectors_match_extract_features(
        images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    root, kinds = images
    out = tmp_path / "feats"
    summary = extract_to_shards(job([root], out))
    rows = read_rows(out)
    paths = rows.column("path").to_pylist()
    assert paths == sorted(str(p) for p in kinds["good"] + kinds["bad"])  # each once, in order
    assert summary["rows"] == len(paths) and summary["errors"] == 2 and summary["shards"] == 4
    assert list(shard_files(out)) == [f"part-0000{i}.parquet" for i in range(4)]
    by_path = {r["path"]: r for r in rows.to_pylist()}
    truncated, not_image = (by_path[str(p)] for p in kinds["bad"])
    assert "truncated" in truncated["error"] and truncated["features"] is None and truncated["sha256"]
    assert "not an image" in not_image["error"] and str(kinds["bad"][1]) in not_image["error"]

    backbone = create_backbone("colour-hist")
    want, ok = extract_features(kinds["good"], backbone, progress=False, num_threads=1)
    assert ok.all()
    got = np.array([by_path[str(p)]["features"] for p in kinds["good"]], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert by_path[str(kinds["good"][1])]["sha256"] == by_path[str(kinds["good"][-1])]["sha256"]

    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.metadata[META_BACKBONE_KEY] == backbone.key.encode()
    assert schema.metadata[META_DIM] == str(backbone.dim).encode()
    assert schema.metadata[META_BACKBONE] == b"colour-hist"
    features_type = schema.field("features").type
    assert pa.types.is_list(features_type) and features_type.value_type == pa.float32()
    table, identity = read_features(out)
    assert table.num_rows == len(paths) and identity.key == backbone.key
    assert json.loads((out / SUCCESS).read_text())["rows"] == len(paths)


def test_lite0_rows_equal_extract_features(images: tuple[Path, dict[str, list[Path]]],
                                           tmp_path: Path) -> None:
    good = images[1]["good"][:4]
    extract_to_shards(job(good, tmp_path / "feats", backbone="efficientnet-lite0"))
    rows = {r["path"]: r["features"] for r in read_rows(tmp_path / "feats").to_pylist()}
    want, ok = extract_features(good, create_backbone("efficientnet-lite0"), progress=False, batch_size=4)
    got = np.array([rows[str(p)] for p in good], dtype=np.float32)
    assert ok.all() and got.shape == (4, 1280)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---- resuming -----------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_a_stopped_job_resumes_without_duplicating_or_losing_rows(
        images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    root, _ = images
    whole = tmp_path / "whole"
    extract_to_shards(job([root], whole))
    out = tmp_path / "feats"
    written: list[str] = []

    def stop_after_two(part: Partition) -> None:
        written.append(part.name)
        if len(written) == 2:
            raise Stop

    with pytest.raises(Stop):
        extract_to_shards(job([root], out, on_shard=stop_after_two))
    assert sorted(p.name for p in out.glob("part-*.parquet")) == written
    assert not (out / SUCCESS).exists()
    summary = extract_to_shards(job([root], out))
    assert summary["shards_skipped"] == 2 and summary["shards_written"] == 2
    assert shard_files(out) == shard_files(whole)

    # a deleted shard and a damaged one (not written by emit) are computed again, nothing else
    (out / "part-00001.parquet").unlink()
    (out / "part-00002.parquet").write_bytes(b"PAR1 garbage")
    summary = extract_to_shards(job([root], out))
    assert summary["shards_written"] == 2 and summary["rows_computed"] == 6
    assert shard_files(out) == shard_files(whole)


KILL_SCRIPT = """
import os, signal, sys
from emit.scale.jobs import ExtractJob, extract_to_shards
done = []
def kill_after_two(part):
    done.append(part)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: a real kill between shards
extract_to_shards(ExtractJob(inputs=[sys.argv[1]], out=sys.argv[2], backbone="colour-hist", device="cpu",
                             shard_size=3, batch_size=2, threads=1, progress=False,
                             on_shard=kill_after_two))
"""


def test_a_killed_process_resumes(images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    root, kinds = images
    out = tmp_path / "feats"
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(root), str(out)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert len(list(out.glob("part-*.parquet"))) == 2
    summary = extract_to_shards(job([root], out))
    assert summary["shards_skipped"] == 2
    paths = read_rows(out).column("path").to_pylist()
    assert paths == sorted(str(p) for p in kinds["good"] + kinds["bad"])


def test_an_out_folder_of_another_backbone_or_other_inputs_is_refused(
        images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    root, kinds = images
    out = tmp_path / "feats"
    extract_to_shards(job([root], out))
    with pytest.raises(EmitError, match=r"part-00000\.parquet holds features of backbone colour-hist"):
        extract_to_shards(job([root], out, backbone="colour-hist+colour-hist"))
    with pytest.raises(EmitError, match=r"part-00001\.parquet is beyond the 1 shard\(s\) of this job"):
        extract_to_shards(job(kinds["good"][:2], out))


# ---- the feature cache ------------------------------------------------------------------------


def test_the_cache_is_filled_and_reused_with_the_vectors_of_extract_features(
        images: tuple[Path, dict[str, list[Path]]], tmp_path: Path) -> None:
    root, kinds = images
    cache = tmp_path / "cache"
    first = extract_to_shards(job([root], tmp_path / "a", cache_dir=str(cache)))
    assert first["cached"] == 1  # img1, whose copy was computed in an earlier batch
    second = extract_to_shards(job([root], tmp_path / "b", cache_dir=str(cache)))
    assert second["cached"] == len(kinds["good"])
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    backbone = create_backbone("colour-hist")
    want, _ = extract_features(kinds["good"][:3], backbone, progress=False, num_threads=1)
    rows = read_rows(tmp_path / "a").to_pylist()
    with FeatureCache(cache, backbone.key) as stored:
        by_hash = stored.get_many(r["sha256"] for r in rows if r["error"] is None)
    by_path = {r["path"]: r["sha256"] for r in rows}
    for path, vec in zip(kinds["good"][:3], want, strict=True):
        np.testing.assert_allclose(by_hash[by_path[str(path)]], vec, rtol=1e-5, atol=1e-6)


# ---- the command line ---------------------------------------------------------------------


def test_the_command_prints_the_summary(images: tuple[Path, dict[str, list[Path]]], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root, kinds = images
    code = main(["features", "extract", "-q", "--backbone", "colour-hist", "--device", "cpu",
                 "--shard-size", "4", "--out", str(tmp_path / "feats"), str(root)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["rows"] == len(kinds["good"]) + 2 and summary["shards"] == 3
    assert summary["errors"] == 2 and summary["images_per_s"] > 0


def test_engine_ray_without_ray_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "ray" else real(name, *a))
    code = main(["features", "extract", "-q", "--engine", "ray", "--out", str(tmp_path / "o"), str(tmp_path)])
    assert code == 2 and "pip install 'emit[scale]'" in caplog.text
    assert not (tmp_path / "o").exists()


def test_no_images_is_an_error_naming_the_inputs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["features", "extract", "-q", "--out", str(tmp_path / "o"), str(tmp_path / "empty")])
    assert code == 2 and f"no image files in {tmp_path / 'empty'}" in caplog.text


def test_ray_with_a_cuda_device_but_no_gpus_per_worker_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(EmitError, match="--device cuda with --engine ray needs --gpus-per-worker"):
        extract_to_shards(job([tmp_path], tmp_path / "o", engine="ray", device="cuda"))
    assert not (tmp_path / "o").exists()


def test_a_manifest_named_relative_to_the_working_folder_gives_absolute_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards (and indexes built from them) must name images that resolve from anywhere."""
    (tmp_path / "list.txt").write_text("imgs/a.png\n")
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["list.txt"]) == [str(tmp_path / "imgs" / "a.png")]
