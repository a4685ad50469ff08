"""A bad-input corpus for every endpoint that takes files: POST /pair, /review/upload and
/search/image (uploads), and POST /review/load (product folders on the server). Every case is
made here, by the test, not shipped: nesting, huge fields, odd encodings, symbolic links in and
out of the root, long names, damaged and oversized images.

Each case asserts the reported problem (a 4xx naming the file for an upload, a problem naming
the file and the record for a folder) and that the good records still come through: the upload
without the bad file is tagged, the folder's good products are loaded beside the bad ones.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import Built, png_bytes, settings_for

from emit.serve.app import create_app
from emit.serve.services import Services

TAGS = ["红色", "蓝色"]


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kind, **options)
    return buf.getvalue()


def big_flat_png(pixels: int) -> bytes:
    side = int(pixels ** 0.5) + 1
    return encoded(Image.new("L", (side, side)), "PNG")


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"] and "Traceback" not in body["message"], body
    return body


# ---- uploads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFile:
    name: str
    data: bytes
    status: int
    code: str
    says: str  # in the message: the file's name (or the part of it shown) or the reason


BAD_FILES: dict[str, BadFile] = {
    # names
    "name-300-chars": BadFile("x" * 296 + ".png", png_bytes(), 422, "bad_image_name", "bytes long"),
    "name-238-chars": BadFile("y" * 234 + ".png", png_bytes(), 422, "bad_image_name", "bytes long"),
    "name-chinese-236-bytes": BadFile("红" * 77 + ".png", png_bytes(), 422, "bad_image_name", "bytes long"),
    "name-dotdot": BadFile("../up.png", png_bytes(), 422, "bad_image_name", "../up.png"),
    "name-absolute": BadFile("/etc/passwd", png_bytes(), 422, "bad_image_name", "/etc/passwd"),
    "name-backslash": BadFile("a\\b.png", png_bytes(), 422, "bad_image_name", "a\\\\b.png"),
    "name-drive": BadFile("C:x.png", png_bytes(), 422, "bad_image_name", "C:x.png"),
    "name-dots-only": BadFile("..", png_bytes(), 422, "bad_image_name", "'..'"),
    "name-spaces-only": BadFile("   ", png_bytes(), 422, "bad_image_name", "empty or a path"),
    # contents
    "text": BadFile("notes.png", b"just some text, not an image\n", 422, "bad_image", "notes.png"),
    "html": BadFile("page.jpg", b"<!doctype html><script>alert(1)</script>", 422, "bad_image", "page.jpg"),
    "svg": BadFile("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', 422, "bad_image",
                   "vector.png"),
    "utf16-text": BadFile("wide.png", "图片 image".encode("utf-16"), 422, "bad_image", "wide.png"),
    "empty": BadFile("empty.png", b"", 422, "bad_image", "empty"),
    "truncated": BadFile("cut.png", png_bytes(size=200)[:150], 422, "bad_image", "cut.png"),
    "random-bytes": BadFile("noise.jpg", os.urandom(300_000), 422, "bad_image", "noise.jpg"),
    "bomb-header-only": BadFile("bomb.png", png_header_only(20_000, 20_000), 413, "image_too_large",
                                "25 megapixels"),
    "bomb-36-megapixels": BadFile("big.png", big_flat_png(36_000_000), 413, "image_too_large",
                                  "36 megapixels"),
}

# odd but fine: these must be accepted and tagged
GOOD_FILES: dict[str, tuple[str, bytes]] = {
    "name-200-bytes": ("z" * 196 + ".png", png_bytes()),
    "name-emoji-and-cjk": ("🙂红色 photo (1).png", png_bytes()),
    "name-rtl-override": ("\u202egnp.exe", png_bytes()),  # shown reversed; still only a name
    "name-windows-reserved": ("CON.png", png_bytes()),
    "cmyk-jpeg": ("cmyk.jpg", encoded(Image.new("CMYK", (40, 40), (0, 200, 200, 0)), "JPEG")),
    "palette-transparent-png": ("p.png", encoded(Image.new("P", (40, 40)), "PNG", transparency=0)),
    "16-bit-png": ("deep.png", encoded(Image.new("I;16", (40, 40), 30000), "PNG")),
    "animated-gif": ("anim.gif", encoded(Image.new("RGB", (40, 40), (200, 0, 0)), "GIF", save_all=True,
                                         append_images=[Image.new("RGB", (40, 40), (0, 0, 200))])),
    "webp": ("w.webp", encoded(Image.new("RGB", (40, 40), (0, 200, 0)), "WEBP")),
    "image-named-html": ("x.html", png_bytes()),  # served back as bytes, never as a page
}


@pytest.fixture(scope="module")
def client(built: Built, shared_services: Services, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[TestClient]:
    app = create_app(settings_for(built, tmp_path_factory.mktemp("bad-input-exports")), shared_services)
    with TestClient(app) as c:
        yield c


GOOD = [("images", ("good_0.png", png_bytes((220, 30, 30)), "image/png")),
        ("images", ("good_1.png", png_bytes((30, 30, 220)), "image/png"))]


@pytest.mark.parametrize("path", ["/pair", "/review/upload"])
@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_a_bad_file_in_a_product_upload_is_named_and_the_good_ones_go_through(client: TestClient, path: str,
                                                                              case: str) -> None:
    bad = BAD_FILES[case]
    files = [GOOD[0], ("images", (bad.name, bad.data, "image/png")), GOOD[1]]
    error = error_of(client.post(path, files=files, data={"tags": TAGS}), bad.status, bad.code)
    assert bad.says in error["message"], error["message"]
    ok = client.post(path, files=GOOD, data={"tags": TAGS})  # the same upload without it
    assert ok.status_code == 200, ok.text
    images = ok.json()["images"] if path == "/pair" else ok.json()["products"][0]["images"]
    assert [i["name"] for i in images] == ["good_0.png", "good_1.png"]
    assert all(i["tag"] in TAGS for i in images)


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_a_bad_file_as_an_image_query_is_named(client: TestClient, case: str) -> None:
    bad = BAD_FILES[case]
    error = error_of(client.post("/search/image", files={"image": (bad.name, bad.data, "image/png")}),
                     bad.status, bad.code)
    assert bad.says in error["message"], error["message"]
    ok = client.post("/search/image", files={"image": GOOD[0][1]}, data={"top_k": "2"})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 2


@pytest.mark.parametrize("case", list(GOOD_FILES), ids=list(GOOD_FILES))
def test_odd_but_valid_files_are_accepted(client: TestClient, case: str) -> None:
    name, data = GOOD_FILES[case]
    paired = client.post("/pair", files=[("images", (name, data, "application/octet-stream")), GOOD[0]],
                         data={"tags": TAGS})
    assert paired.status_code == 200, paired.text
    assert [i["name"] for i in paired.json()["images"]] == [name, "good_0.png"]
    assert all(i["tag"] in TAGS for i in paired.json()["images"])
    assert client.post("/search/image", files={"image": (name, data, "image/png")}).status_code == 200


@pytest.mark.parametrize(("data", "status", "code", "says"), [
    ({"tags": ["x" * 201]}, 422, "bad_tag", "longer than 200"),
    ({"tags": ["[" * 150 + "]" * 150]}, 422, "bad_tag", "longer than 200"),  # nesting is only text here
    ({"tags": ["红色", "红色"]}, 422, "duplicate_tag", "红色"),
    ({"tags": [f"t{k}" for k in range(65)]}, 422, "too_many_tags", "64"),
    ({"tags": ["\u3000", " \t "]}, 422, "no_tags", "option tags"),
    ({"tags": TAGS, "product_id": "../p"}, 422, "bad_product_id", "../p"),
    ({"tags": TAGS, "product_id": "a/b"}, 422, "bad_product_id", "a/b"),
    ({"tags": TAGS, "product_id": "品" * 70}, 422, "bad_product_id", "bytes long"),
    ({"tags": TAGS, "product_id": "x" * 201}, 422, "invalid_request", "product_id"),
])
def test_bad_form_fields_are_named(client: TestClient, data: dict, status: int, code: str, says: str) -> None:
    for path in ("/pair", "/review/upload"):
        error = error_of(client.post(path, files=GOOD, data=data), status, code)
        assert says in error["message"], error["message"]


def raw_multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"emitcorpus") -> tuple[bytes, str]:
    """A multipart body from raw header and content bytes (for encodings clients would not make)."""
    body = b""
    for header, content in parts:
        body += b"--" + boundary + b"\r\n" + header + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def image_part(filename: bytes, data: bytes) -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="images"; filename="' + filename + b'"\r\n'
            b"Content-Type: image/png", data)


def tag_part(value: bytes) -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="tags"', value


@pytest.mark.parametrize(("raw", "read_as"), [
    (b"latin1-\xe9.png", "latin1-\xe9.png"), (b"\xba\xec\xc9\xab.png", "\xba\xec\xc9\xab.png"),  # GB 18030
])
def test_text_not_in_utf8_is_read_as_latin1_as_starlette_does(client: TestClient, raw: bytes,
                                                             read_as: str) -> None:
    """A documented limit: Starlette reads form text that is not UTF-8 as Latin-1, so such a
    name or tag arrives garbled (never refused, never a 5xx); clients must send UTF-8."""
    body, kind = raw_multipart([image_part(raw, png_bytes()), tag_part(raw)])
    response = client.post("/pair", content=body, headers={"content-type": kind})
    assert response.status_code == 200, response.text
    assert response.json()["images"][0]["name"] == read_as and response.json()["tags"] == [read_as]


@pytest.mark.parametrize("parts", [
    [image_part(b"a\x00.png", png_bytes()), tag_part("红色".encode())],  # NUL in a name
    [image_part(b"a.png", png_bytes()), tag_part(b"x" * (2 << 20))],  # a 2 MB form field
    [image_part(b"a.png", png_bytes())] + [tag_part(b"t") for _ in range(1100)],  # too many fields
])
def test_odd_encodings_in_a_raw_multipart_body_get_a_4xx(client: TestClient, parts) -> None:
    body, kind = raw_multipart(parts)
    for path in ("/pair", "/review/upload"):
        response = client.post(path, content=body, headers={"content-type": kind})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"] and response.json()["message"]
    body, kind = raw_multipart([image_part(b"good.png", png_bytes()), tag_part("红色".encode())])
    assert client.post("/pair", content=body, headers={"content-type": kind}).status_code == 200


# ---- product folders on the server -------------------------------------------------------------


def write_product(folder: Path, images: dict[str, bytes | None], tags: list[str] | None = None,
                  profile: bytes | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if data is not None:
            (folder / name).write_bytes(data)
    if profile is None:
        body = {"optional_tags": tags or TAGS, "imgs_tags": [{name: ""} for name in images]}
        profile = json.dumps(body, ensure_ascii=False).encode()
    (folder / "profile.json").write_bytes(profile)


def jpeg(colour: tuple[int, int, int]) -> bytes:
    return encoded(Image.new("RGB", (48, 48), colour), "JPEG")


def profile_of(images: list[str], **extra: object) -> dict:
    return {"optional_tags": TAGS, "imgs_tags": [{n: ""} for n in images], **extra}


@dataclass(frozen=True)
class FolderCase:
    record: str  # the problem's record (product id, or "<pid> image <name>")
    says: str  # in the problem's text
    loads: bool | None  # the product itself still loads (with its other images); None: either
    # (a product whose image files are all missing is kept for the predictions, or dropped)


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


FOLDER_CASES: dict[str, FolderCase] = {
    "nested-profile": FolderCase("nested-profile", "nested deeper", False),
    "nested-value": FolderCase("nested-value", "nested deeper", False),
    "utf16-profile": FolderCase("utf16-profile", "UTF-16", False),
    "latin1-profile": FolderCase("latin1-profile", "not UTF-8", False),
    "empty-profile": FolderCase("empty-profile", "empty", False),
    "array-profile": FolderCase("array-profile", "not an object", False),
    "huge-unknown-field": FolderCase("", "", True),  # kept as it is, and the product loads
    "bom-profile": FolderCase("", "", True),  # a UTF-8 byte-order mark is fine
    "path-image-name": FolderCase("path-image-name image", "leaves the product folder", True),
    "long-image-name": FolderCase("long-image-name image", "not found", True),
    "thousands-of-missing-images": FolderCase("thousands-of-missing-images image m0.jpg", "not found", None),
    "folder-link-out": FolderCase("folder-link-out", "leads outside", False),
    "profile-link-out": FolderCase("profile-link-out", "leads outside", False),
    "image-link-out": FolderCase("image-link-out image image-link-out_1.jpg", "leads outside", True),
    # not a regular file: dropped as missing before anything opens it
    "image-link-to-device": FolderCase("image-link-to-device image image-link-to-device_1.jpg", "not found",
                                       True),
    "image-link-in": FolderCase("", "", True),  # followed
    "folder-link-in": FolderCase("", "", True),  # followed
    "image-is-a-fifo": FolderCase("image-is-a-fifo image image-is-a-fifo_1.jpg", "not found", True),
    "image-is-a-folder": FolderCase("image-is-a-folder image image-is-a-folder_1.jpg", "not found", True),
    "image-bomb": FolderCase("image-bomb image image-bomb_1.jpg", "too large", True),
    "image-not-an-image": FolderCase("image-not-an-image image image-not-an-image_1.jpg", "not an image",
                                     True),
}


def build_corpus(root: Path, outside: Path) -> None:
    batch = root / "corpus"
    for k in range(2):
        write_product(batch / f"good{k}", {f"good{k}_0.jpg": jpeg((220, 30, 30)),
                                           f"good{k}_1.jpg": jpeg((30, 30, 220))})
    write_product(outside / "elsewhere", {"elsewhere_0.jpg": jpeg((0, 200, 0))})
    (outside / "secret.jpg").write_bytes(jpeg((1, 2, 3)))

    def product(pid: str, *, profile: bytes | None = None, second: bytes | None = b"jpeg") -> Path:
        images = {f"{pid}_0.jpg": jpeg((220, 30, 30)),
                  f"{pid}_1.jpg": jpeg((30, 30, 220)) if second == b"jpeg" else second}
        write_product(batch / pid, images, profile=profile)
        return batch / pid

    names = [f"x_{k}.jpg" for k in range(2)]
    product("nested-profile", profile=("{\"optional_tags\": " + _deep(1000) + "}").encode())
    product("nested-value", profile=json.dumps(profile_of(names, extra=json.loads(_deep(150)))).encode())
    product("utf16-profile", profile=json.dumps(profile_of(names)).encode("utf-16"))
    product("latin1-profile", profile=json.dumps(profile_of(names), ensure_ascii=False).replace(
        "红色", "rouge é").encode("latin-1", "replace"))
    product("empty-profile", profile=b"")
    product("array-profile", profile=b"[1, 2, 3]")
    product("huge-unknown-field", profile=json.dumps(profile_of(
        ["huge-unknown-field_0.jpg", "huge-unknown-field_1.jpg"], description="长" * 1_000_000)).encode())
    product("bom-profile", profile=b"\xef\xbb\xbf" + json.dumps(profile_of(
        ["bom-profile_0.jpg", "bom-profile_1.jpg"])).encode())
    product("path-image-name", profile=json.dumps(profile_of(
        ["path-image-name_0.jpg", "../good0/good0_0.jpg"])).encode())
    long_names = ["long-image-name_0.jpg", "l" * 300 + ".jpg"]
    product("long-image-name", profile=json.dumps(profile_of(long_names)).encode())
    missing = [f"m{k}.jpg" for k in range(300)]
    product("thousands-of-missing-images", profile=json.dumps(profile_of(missing)).encode())
    (batch / "folder-link-out").symlink_to(outside / "elsewhere", target_is_directory=True)
    product("profile-link-out")
    (batch / "profile-link-out" / "profile.json").unlink()
    (batch / "profile-link-out" / "profile.json").symlink_to(outside / "elsewhere" / "profile.json")
    product("image-link-out", second=None)
    (batch / "image-link-out" / "image-link-out_1.jpg").symlink_to(outside / "secret.jpg")
    product("image-link-to-device", second=None)
    (batch / "image-link-to-device" / "image-link-to-device_1.jpg").symlink_to("/dev/zero")
    product("image-link-in", second=None)
    (batch / "image-link-in" / "image-link-in_1.jpg").symlink_to("../good0/good0_1.jpg")
    (root / "elsewhere-inside").mkdir()
    write_product(root / "elsewhere-inside" / "folder-link-in", {"folder-link-in_0.jpg": jpeg((30, 30, 220))})
    (batch / "folder-link-in").symlink_to(root / "elsewhere-inside" / "folder-link-in",
                                          target_is_directory=True)
    product("image-is-a-fifo", second=None)
    os.mkfifo(batch / "image-is-a-fifo" / "image-is-a-fifo_1.jpg")
    product("image-is-a-folder", second=None)
    (batch / "image-is-a-folder" / "image-is-a-folder_1.jpg").mkdir()
    product("image-bomb", second=png_header_only(12_000, 9_000))
    product("image-not-an-image", second=b"GIF89a this is not really a gif")


@pytest.fixture(scope="module")
def loaded(built: Built, shared_services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("corpus")
    root, outside = base / "root", base / "outside"
    build_corpus(root, outside)
    settings = replace(settings_for(built, base / "exports"), products_root=root)
    with TestClient(create_app(settings, shared_services)) as c:
        response = c.post("/review/load", json={"folder": "corpus"})
        assert response.status_code == 200, response.text
        batch = response.json()
        served = {(p["product_id"], i["name"]): c.get(i["image_url"])
                  for p in batch["products"] for i in p["images"][:3]}  # not all 300 missing ones
        exported = c.post(f"/review/batches/{batch['batch_id']}/export", json={})
    return {"batch": batch, "served": served, "exported": exported, "outside": outside, "root": root}


def test_the_good_products_load_beside_every_bad_one(loaded: dict) -> None:
    products = {p["product_id"]: p for p in loaded["batch"]["products"]}
    assert {"good0", "good1"} <= set(products)
    for pid in ("good0", "good1"):
        assert all(i["tag"] in TAGS for i in products[pid]["images"])
    expected = {pid for pid, case in FOLDER_CASES.items() if case.loads} | {"good0", "good1"}
    either = {pid for pid, case in FOLDER_CASES.items() if case.loads is None}
    assert expected <= set(products) <= expected | either
    assert loaded["exported"].status_code == 200  # and the batch exports


@pytest.mark.parametrize("case", [c for c, v in FOLDER_CASES.items() if v.record], ids=str)
def test_each_bad_product_folder_is_one_reported_problem(loaded: dict, case: str) -> None:
    expected = FOLDER_CASES[case]
    problems = [p for p in loaded["batch"]["problems"] if p["record"].startswith(expected.record)]
    assert problems, [p["record"] for p in loaded["batch"]["problems"]]
    problem = problems[0]
    assert expected.says in problem["what"], problem
    assert problem["fix"] and problem["where"].startswith(f"corpus/{case}")  # relative to the root
    shown = json.dumps(loaded["batch"])
    assert str(loaded["outside"]) not in shown and "/dev/zero" not in shown  # where links lead is not said


def test_no_file_outside_the_root_is_served_and_links_inside_are(loaded: dict) -> None:
    served = loaded["served"]
    secret = (loaded["outside"] / "secret.jpg").read_bytes()
    assert all(r.content != secret for r in served.values())
    assert served[("image-link-out", "image-link-out_1.jpg")].status_code == 403
    for pid in ("image-link-to-device", "image-is-a-fifo", "image-is-a-folder"):
        key = (pid, f"{pid}_1.jpg")
        if key in served:  # kept as a missing image: never served (and a FIFO does not hang the server)
            assert served[key].status_code in (403, 404) and served[key].json()["error"]
    inside = served[("image-link-in", "image-link-in_1.jpg")]
    assert inside.status_code == 200
    assert inside.content == (loaded["root"] / "corpus/good0/good0_1.jpg").read_bytes()
    assert served[("folder-link-in", "folder-link-in_0.jpg")].status_code == 200


# ---- the same pixel cap on the command line ---------------------------------------------------


def test_the_cli_skips_an_oversized_image_with_a_problem_and_no_raw_pil_warning(built: Built,
                                                                               tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"
    write_product(data / "p1", {"p1_0.jpg": jpeg((220, 30, 30)), "p1_1.jpg": png_header_only(10_000, 10_000)})
    write_product(data / "p2", {"p2_0.jpg": jpeg((30, 30, 220))})
    out = tmp_path / "final_json.json"
    command = [sys.executable, "-m", "emit.cli", "pair", "predict", str(built.pairing_model), str(data),
               "--out", str(out), "--cache-dir", str(built.cache), "--threads", "1", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DecompressionBomb" not in done.stderr and "warnings.warn" not in done.stderr
    assert "p1_1.jpg" in done.stderr and "100 megapixels" in done.stderr  # the problem, said once, by emit
    written = json.loads(out.read_text(encoding="utf-8"))
    assert set(written) == {"p1", "p2"}  # the good images are tagged
    assert next(iter(written["p2"]["imgs_tags"][0].values())) in TAGS
