"""Reading inside a root (emit.files.open_within and the readers that honour it), and the
library's one pixel cap on decoded images.

The root is what emit serve's --products-root is: nothing outside it may be read, whatever the
symbolic links inside it say; links that stay inside are followed.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emit.files
from emit.data.images import MAX_IMAGE_PIXELS, ImageError, ImageTooLarge, load_image, load_images_threaded
from emit.data.products import read_products
from emit.files import OutsideRoot, open_within, read_bytes_within, read_json, read_text, root_of, within
from emit.problems import ProblemLog
from emit.vision.backbones import create_backbone
from emit.vision.features import extract_features

SECRET = b"outside the root: must never be read"


def jpeg(colour: tuple[int, int, int] = (200, 30, 35), size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """root/ with a file, links inside and out, a FIFO; outside/ with a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "sub" / "a.txt").write_bytes(b"inside")
    (root / "sub" / "link-in.txt").symlink_to("a.txt")
    (root / "link-up-in.txt").symlink_to("sub/a.txt")
    (root / "sub" / "link-out.txt").symlink_to(outside / "secret.txt")
    (root / "sub" / "relative-out.txt").symlink_to("../../outside/secret.txt")
    (root / "folder-out").symlink_to(outside, target_is_directory=True)
    (root / "sub" / "dangling-out.txt").symlink_to(outside / "nothing.txt")
    os.mkfifo(root / "sub" / "fifo.jpg")
    return root, outside


@pytest.mark.parametrize("name", ["sub/a.txt", "sub/link-in.txt", "link-up-in.txt"])
def test_files_and_links_that_stay_inside_are_read(tree, name: str) -> None:
    root, _ = tree
    assert read_bytes_within(root / name, root) == b"inside"


@pytest.mark.parametrize("name", ["sub/link-out.txt", "sub/relative-out.txt", "folder-out/secret.txt",
                                  "sub/dangling-out.txt", "sub/../../outside/secret.txt"])
def test_whatever_resolves_outside_is_refused(tree, name: str) -> None:
    root, _ = tree
    with pytest.raises(OutsideRoot) as info:
        read_bytes_within(root / name, root)
    assert isinstance(info.value, PermissionError) and "leads outside" in str(info.value)


def test_a_root_that_is_itself_a_link_still_confines(tree, tmp_path: Path) -> None:
    root, _ = tree
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert read_bytes_within(alias / "sub" / "link-in.txt", alias) == b"inside"
    with pytest.raises(OutsideRoot):
        read_bytes_within(alias / "sub" / "link-out.txt", alias)


def test_fifos_and_folders_are_refused_without_blocking(tree) -> None:
    root, _ = tree
    with pytest.raises(OSError, match="not a regular file"):  # a FIFO would block an ordinary open
        open_within(root / "sub" / "fifo.jpg", root)
    with pytest.raises(IsADirectoryError):
        open_within(root / "sub", root)


def test_a_link_swapped_after_the_check_is_caught_on_the_open_descriptor(tree, monkeypatch) -> None:
    """The path is resolved (inside), then an attacker re-points the link out before the open:
    the file actually opened is what is checked, so the swap is refused."""
    root, outside = tree
    link = root / "sub" / "swap.txt"
    link.symlink_to("a.txt")
    real_open = os.open

    def open_after_swap(path, flags, *args):
        if Path(path) == link:
            link.unlink()
            link.symlink_to(outside / "secret.txt")
        return real_open(path, flags, *args)

    monkeypatch.setattr(emit.files.os, "open", open_after_swap)
    with pytest.raises(OutsideRoot):
        read_bytes_within(link, root)


@pytest.mark.parametrize("swap", [False, True])
def test_without_proc_the_inode_of_the_opened_file_is_compared(tree, monkeypatch, swap: bool) -> None:
    root, outside = tree
    monkeypatch.setattr(emit.files, "_PROC_FD", "/no/proc/here")  # as on macOS or Windows
    assert read_bytes_within(root / "sub" / "link-in.txt", root) == b"inside"
    with pytest.raises(OutsideRoot):
        read_bytes_within(root / "sub" / "link-out.txt", root)
    if swap:  # swapped after the open: the path now names another file than the one opened
        link = root / "sub" / "swap.txt"
        link.symlink_to("a.txt")
        real_open = os.open

        def open_then_swap(path, flags, *args):
            fd = real_open(str(outside / "secret.txt"), flags, *args) if Path(path) == link else \
                real_open(path, flags, *args)
            return fd

        monkeypatch.setattr(emit.files.os, "open", open_then_swap)
        with pytest.raises(OutsideRoot):
            read_bytes_within(link, root)


def test_within_paths_carry_their_root_to_every_reader(tree) -> None:
    root, _ = tree
    good, bad = within(root / "sub" / "link-in.txt", root), within(root / "sub" / "link-out.txt", root)
    assert root_of(good) == root and root_of(good.parent) is None and root_of(root / "x") is None
    assert good.read_bytes() == b"inside" and read_text(good) == "inside"
    for read in (lambda p: p.read_bytes(), lambda p: p.read_text(), emit.files.read_file_bytes):
        with pytest.raises(OutsideRoot):
            read(bad)
    with pytest.raises(emit.files.EmitError, match="leads outside"):
        read_text(bad)
    with pytest.raises(emit.files.EmitError, match="leads outside"):
        read_json(bad)
    assert within(root / "sub" / "link-out.txt", None).read_bytes() == SECRET  # no root: as before


# ---- products and images read inside a root ------------------------------------------------


def write_product(folder: Path, images: dict[str, bytes | None],
                  tags: tuple[str, ...] = ("红色", "黑色")) -> None:
    """A product folder; an image given as None is left for the caller to create (e.g. a link)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if data is not None:
            (folder / name).write_bytes(data)
    profile = {"optional_tags": list(tags), "imgs_tags": [{name: ""} for name in images]}
    import json

    (folder / "profile.json").write_text(json.dumps(profile, ensure_ascii=False), encoding="utf-8")


@pytest.fixture()
def hostile_root(tmp_path: Path) -> tuple[Path, Path]:
    """root/batch: good, folder-out (a link to a product outside), profile-out, image-out,
    link-in (an image linked to another product's image, inside)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    batch = root / "batch"
    write_product(batch / "good", {"good_0.jpg": jpeg(), "good_1.jpg": jpeg((0, 0, 200))})
    write_product(outside / "elsewhere", {"elsewhere_0.jpg": jpeg((0, 200, 0))})
    (outside / "secret.jpg").write_bytes(jpeg((1, 2, 3)))
    (batch / "folder-out").symlink_to(outside / "elsewhere", target_is_directory=True)
    write_product(batch / "profile-out", {"profile-out_0.jpg": jpeg()})
    (batch / "profile-out" / "profile.json").unlink()
    (batch / "profile-out" / "profile.json").symlink_to(outside / "elsewhere" / "profile.json")
    write_product(batch / "image-out", {"image-out_0.jpg": jpeg(), "image-out_1.jpg": None})
    (batch / "image-out" / "image-out_1.jpg").symlink_to(outside / "secret.jpg")
    write_product(batch / "link-in", {"link-in_0.jpg": None})
    (batch / "link-in" / "link-in_0.jpg").symlink_to("../good/good_1.jpg")
    return root, outside


def test_read_products_confined_reports_links_out_and_keeps_the_rest(hostile_root) -> None:
    root, _ = hostile_root
    problems = ProblemLog(echo=False)
    products, _ = read_products(root / "batch", problems=problems, confine_to=root)
    by_id = {p.product_id: p for p in products}
    assert {"good", "image-out", "link-in"} <= set(by_id)
    assert "folder-out" not in by_id and "profile-out" not in by_id
    refused = {p.record: p for p in problems.items}
    for pid in ("folder-out", "profile-out"):
        assert "leads outside" in refused[pid].what and "instead of linking" in refused[pid].fix
        assert refused[pid].where.endswith(f"{pid}/profile.json")
    assert all(p.confine == root for p in products)
    assert root_of(by_id["good"].image_path("good_0.jpg")) == root
    # unconfined (the CLI): read as before, links and all
    everything, _ = read_products(root / "batch", problems=ProblemLog(echo=False))
    assert {"folder-out", "profile-out"} <= {p.product_id for p in everything}
    assert all(p.confine is None for p in everything)


def test_a_combined_file_that_leads_out_is_refused(hostile_root) -> None:
    root, outside = hostile_root
    (outside / "test_all.json").write_text('{"x": {"optional_tags": ["a"], "imgs_tags": [{"x_0.jpg": ""}]}}')
    (root / "test_all.json").symlink_to(outside / "test_all.json")
    with pytest.raises(emit.files.EmitError, match="leads outside"):
        read_products(root / "test_all.json", confine_to=root, require_images=False)


def test_images_that_lead_out_are_never_decoded_nor_hashed(hostile_root) -> None:
    root, _ = hostile_root
    products, _ = read_products(root / "batch", problems=ProblemLog(echo=False), confine_to=root)
    by_id = {p.product_id: p for p in products}
    out = by_id["image-out"].image_path("image-out_1.jpg")
    inside = by_id["link-in"].image_path("link-in_0.jpg")
    with pytest.raises(ImageError, match="leads outside") as info:
        load_image(out)
    assert "instead of linking" in info.value.fix
    assert load_image(inside).size == (32, 32)  # a link inside is followed
    problems = ProblemLog(echo=False)
    paths = [by_id["good"].image_path("good_0.jpg"), out, inside]
    feats, ok = extract_features(paths, create_backbone("colour-hist"), problems=problems, progress=False,
                                 record_names=["good", "out", "in"])
    assert ok.tolist() == [True, False, True] and not np.any(feats[1])
    (problem,) = problems.items
    assert problem.record == "out" and "leads outside" in problem.what and "refused" in problem.what
    threaded = ProblemLog(echo=False)
    images = list(load_images_threaded(paths, None, 2, threaded, ["good", "out", "in"]))
    assert images[1] is None and images[0] is not None and images[2] is not None
    assert [p.record for p in threaded.items] == ["out"]


# ---- the pixel cap --------------------------------------------------------------------------


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10_000, 10_000))  # 100 megapixels declared, none stored
    with pytest.raises(ImageTooLarge) as info:
        load_image(path)
    error = info.value
    assert error.pixels == 100_000_000 and error.limit == MAX_IMAGE_PIXELS
    assert "100 megapixels" in error.what and "25 megapixels" in error.what
    assert "EMIT_MAX_IMAGE_PIXELS" in error.fix and str(path) in str(error)


def test_the_pixel_cap_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 100)).save(path)
    assert load_image(path).size == (100, 100)
    with pytest.raises(ImageTooLarge, match="10,000 pixels"):
        load_image(path, max_pixels=9_999)
    monkeypatch.setenv("EMIT_MAX_IMAGE_PIXELS", "5000")
    with pytest.raises(ImageTooLarge):
        load_image(path)
    monkeypatch.setenv("EMIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(emit.files.EmitError, match="EMIT_MAX_IMAGE_PIXELS"):
        load_image(path)


def test_an_oversized_image_is_one_reported_skipped_image(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg())
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(12_000, 9_000))
    problems = ProblemLog(echo=False)
    out = list(load_images_threaded([good, huge, good], None, 2, problems, ["a", "b", "c"]))
    assert out[0] is not None and out[1] is None and out[2] is not None
    (problem,) = problems.items
    assert problem.record == "b" and "too large" in problem.what and "skipped" in problem.what


def test_no_raw_pil_warning_reaches_stderr(tmp_path: Path) -> None:
    """PIL warns on opening a 100-megapixel image (over its own limit of ~89); emit says it once,
    as its own problem, so stderr stays clean."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    code = ("import sys; from emit.data.images import load_image, ImageTooLarge\n"
            f"try:\n    load_image({str(path)!r})\nexcept ImageTooLarge as e:\n    print('refused:', e.what)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: image is too large" in done.stdout
    assert "DecompressionBomb" not in done.stderr and "Warning" not in done.stderr
