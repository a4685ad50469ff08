"""Every endpoint of the service, in process (FastAPI's TestClient), with each kind of bad input."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import Built, png_bytes, settings_for

from emit.data.products import read_products
from emit.data.synthetic import make_products
from emit.serve.app import create_app
from emit.serve.services import PairingService, SearchService, Services


@pytest.fixture(scope="module")
def client(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(settings_for(built, tmp_path_factory.mktemp("exports")))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def services(client: TestClient) -> Services:
    return client.app.state.services  # type: ignore[attr-defined]


def small_app(built: Built, tmp_path: Path, services: Services, **limits: int) -> TestClient:
    """An app with tight limits, sharing the loaded models (loading happens once per session)."""
    return TestClient(create_app(settings_for(built, tmp_path / "exports", **limits), services))


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert body["message"] and "Traceback" not in body["message"]
    return body


def upload(name: str, data: bytes, kind: str = "image/png") -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (name, data, kind))


def product_files(product) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [upload(n, product.image_path(n).read_bytes(), "image/jpeg") for n in product.images]


# ---- service ------------------------------------------------------------------------------


def test_health_says_what_is_served(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body == {"status": "ok", "version": body["version"], "search": True, "pairing": True}


def test_start_up_loads_what_first_requests_would_otherwise_load(built: Built,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import jieba

    import emit.retrieval.search
    import emit.serve.services

    loaded: list[str] = []
    real = emit.retrieval.search.model_backbone
    monkeypatch.setattr(emit.retrieval.search, "model_backbone",
                        lambda m: loaded.append("backbone") or real(m))
    monkeypatch.setattr(jieba.dt, "initialized", False)  # as in a fresh process
    search = SearchService(built.index, None, built.cache)
    assert loaded == ["backbone"] and jieba.dt.initialized  # before any request
    search.search(image=built.shapes / "red_circle.png", top_k=1)
    search.search(text="红色", top_k=1)
    assert loaded == ["backbone"]  # requests load nothing
    predictions: list[int] = []
    real_predict = emit.serve.services.predict_products
    monkeypatch.setattr(emit.serve.services, "predict_products",
                        lambda *a, **k: predictions.append(1) or real_predict(*a, **k))
    PairingService(built.pairing_model, built.cache)
    assert predictions == [1]  # the pairing model has run once, on a generated product


def test_info_names_the_index_the_models_and_versions(client: TestClient, built: Built) -> None:
    info = client.get("/info").json()
    assert {"emit", "torch", "fastapi", "uvicorn"} <= set(info["versions"])
    search = info["search"]
    assert search["folder"] == str(built.index)
    assert search["images"]["count"] == 20 and search["images"]["kind"] == "exact"
    assert "ids" not in search["images"]
    assert search["texts"]["count"] == 40
    assert search["model"]["backbone"]["name"] == "colour-hist"
    assert search["model"]["identity"]["text"]["weights_sha256"]
    assert search["model"]["versions"]["emit"] == info["emit"]
    pairing = info["pairing"]
    assert pairing["folder"] == str(built.pairing_model) and pairing["members"] == 2
    assert pairing["assign"] == "exact" and pairing["backbone"]["name"] == "colour-hist"
    assert pairing["versions"]["torch"] == info["versions"]["torch"]
    assert info["limits"]["max_top_k"] == 100


def test_openapi_schema_and_docs_page_need_no_cdn(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    wanted = {"/search/text", "/search/image", "/pair", "/health", "/info", "/review/load"}
    assert wanted <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


@pytest.mark.parametrize(("path", "marker"), [("/", "search.js"), ("/review", "review.js")])
def test_pages_are_served_with_local_assets_only(client: TestClient, path: str, marker: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and marker in page.text
    for asset in ("/static/style.css", "/static/common.js", f"/static/{marker}"):
        assert client.get(asset).status_code == 200
    for text in (page.text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text  # nothing from another host


def test_without_fastapi_offline_there_is_no_docs_page_rather_than_a_cdn_one(
        built: Built, tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # as if not installed
    with TestClient(create_app(settings_for(built, tmp_path), services)) as c:
        error_of(c.get("/docs"), 404, "not_found")
        assert "/search/text" in c.get("/openapi.json").json()["paths"]


def test_cjk_font_is_served_for_chinese_tags(client: TestClient) -> None:
    font = client.get("/fonts/cjk.otf")
    assert font.status_code == 200 and font.content[:4] == b"OTTO"  # an OpenType/CFF font


# ---- text search --------------------------------------------------------------------------


def test_text_search_ranks_images_with_links(client: TestClient, built: Built) -> None:
    body = client.post("/search/text", json={"query": "a red circle", "top_k": 5}).json()
    assert body["kind"] == "text" and body["target"] == "images"
    assert body["metric"] == client.get("/info").json()["search"]["images"]["metric"]
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=body["metric"] == "ip")  # nearest first: cosine or distance
    assert sum(h["name"].startswith("red") for h in hits[:3]) >= 2
    first = hits[0]
    assert first["image_url"] == f"/images/{client.app.state.services.search.row_of[first['id']]}"
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.content == Path(first["id"]).read_bytes()
    thumb = client.get(first["thumbnail_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


def test_text_search_of_texts(client: TestClient) -> None:
    body = client.post("/search/text", json={"query": "blue square", "top_k": 4, "target": "texts"}).json()
    assert body["target"] == "texts" and len(body["results"]) == 4
    assert all(h.get("thumbnail_url") is None for h in body["results"])
    assert any("blue" in h["id"] for h in body["results"][:2])


def test_top_k_larger_than_the_index_returns_all(client: TestClient) -> None:
    body = client.post("/search/text", json={"query": "green", "top_k": 100}).json()
    assert len(body["results"]) == 20


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"query": "", "top_k": 5}, 422, "invalid_request"),
    ({"query": "   ", "top_k": 5}, 422, "empty_query"),
    ({"query": "red", "top_k": 0}, 422, "invalid_request"),
    ({"query": "red", "top_k": 101}, 422, "invalid_request"),
    ({"query": "red", "top_k": "many"}, 422, "invalid_request"),
    ({"query": "red", "top_k": True}, 422, "invalid_request"),  # not silently 1
    ({"query": "red", "top_k": "5"}, 422, "invalid_request"),
    ({"query": "x" * 501}, 422, "invalid_request"),
    ({"top_k": 5}, 422, "invalid_request"),
    ({"query": "red", "target": "videos"}, 422, "invalid_request"),
    ({"query": "red", "topk": 5}, 422, "invalid_request"),  # a misspelt field is not ignored
    (["red"], 422, "invalid_request"),
])
def test_text_search_refuses_bad_bodies(client: TestClient, body, status: int, code: str) -> None:
    error = error_of(client.post("/search/text", json=body), status, code)
    if code == "invalid_request":
        assert error["details"]


def test_oversized_top_k_says_the_limit(client: TestClient) -> None:
    response = client.post("/search/text", json={"query": "red", "top_k": 1000})
    error = error_of(response, 422, "invalid_request")
    assert "top_k" in error["message"] and "100" in error["message"]


@pytest.mark.parametrize("raw", [b'{"query": "red", ', b"not json", b'{"query": "red"}}', b"\xff\xfe"])
def test_malformed_json_is_a_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/search/text", content=raw, headers={"content-type": "application/json"})
    error = error_of(response, 400, "malformed_json")
    assert "not valid JSON" in error["message"] and "query" not in error["message"]


@pytest.mark.parametrize(("path", "kind"), [
    ("/search/text", "text/plain"),
    ("/search/text", "application/x-www-form-urlencoded"),  # what curl -d sends without -H
    ("/review/load", "application/xml"),
    ("/review/batches/nope/export", "text/plain"),
])
def test_a_json_endpoint_refuses_another_content_type(client: TestClient, path: str, kind: str) -> None:
    body = b'{"query": "red", "folder": "batch1"}'
    response = client.post(path, content=body, headers={"content-type": kind})
    error = error_of(response, 415, "unsupported_media_type")
    assert kind in error["message"] and "application/json" in error["message"]


def test_an_upload_endpoint_refuses_json(client: TestClient) -> None:
    for path in ("/pair", "/review/upload", "/search/image"):
        error = error_of(client.post(path, json={"tags": ["红色"]}), 415, "unsupported_media_type")
        assert "multipart/form-data" in error["message"]
    # the right type with wrong content is still a 422 that names the fields
    error_of(client.post("/pair", data={"tags": "红色"}, files=[("other", ("a.txt", b"x", "text/plain"))]),
             422, "invalid_request")


# ---- image search -------------------------------------------------------------------------


def test_image_search_finds_the_same_image_and_its_captions(client: TestClient, built: Built) -> None:
    photo = (built.shapes / "blue_square.png").read_bytes()
    body = client.post("/search/image", files={"image": ("q.png", photo, "image/png")},
                       data={"top_k": "3"}).json()
    assert body["kind"] == "image" and body["query"] == "q.png"
    first = body["results"][0]
    same = 1.0 if body["metric"] == "ip" else 0.0  # cosine, or squared distance, of a vector to itself
    assert first["name"] == "blue_square.png" and first["score"] == pytest.approx(same, abs=1e-5)
    texts = client.post("/search/image", files={"image": ("q.png", photo, "image/png")},
                        data={"top_k": "4", "target": "texts"}).json()
    assert any("blue" in h["id"] for h in texts["results"][:2])


def truncated_png() -> bytes:
    return png_bytes(size=200)[:150]


@pytest.mark.parametrize(("name", "data", "code"), [
    ("notes.png", b"hello, I am text", "bad_image"),
    ("cut.png", truncated_png(), "bad_image"),
    ("empty.png", b"", "bad_image"),
    ("../up.png", png_bytes(), "bad_image_name"),
])
def test_image_search_refuses_non_images(client: TestClient, name: str, data: bytes, code: str) -> None:
    error = error_of(client.post("/search/image", files={"image": (name, data, "image/png")}), 422, code)
    assert (name.strip("./") in error["message"]) if code == "bad_image" else True


def test_image_search_refuses_a_decompression_bomb(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG")  # 36 megapixels in ~40 kB
    error_of(client.post("/search/image", files={"image": ("big.png", buf.getvalue(), "image/png")}),
             413, "image_too_large")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: PIL refuses it on opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_an_image_over_pils_own_cap_is_too_large_not_bad(client: TestClient) -> None:
    bomb = png_header_only(20_000, 20_000)  # 400 megapixels: over PIL's cap, which raises on open
    error = error_of(client.post("/search/image", files={"image": ("bomb.png", bomb, "image/png")}),
                     413, "image_too_large")
    assert "25 megapixels" in error["message"] and "MAX_IMAGE_PIXELS" not in error["message"]


def test_image_search_needs_a_file_and_sane_top_k(client: TestClient) -> None:
    error_of(client.post("/search/image", data={"top_k": "3"}), 422, "invalid_request")
    error_of(client.post("/search/image", files={"image": ("a.png", png_bytes(), "image/png")},
                         data={"top_k": "0"}), 422, "invalid_request")


def test_upload_over_the_size_limit_is_a_413(built: Built, tmp_path: Path, services: Services) -> None:
    with small_app(built, tmp_path, services, max_upload_bytes=20_000) as small:
        big = png_bytes(size=400)  # noise would be bigger; a flat PNG is small, so pad it
        response = small.post("/search/image", files={"image": ("a.png", big + b"\0" * 30_000, "image/png")})
        error_of(response, 413, "upload_too_large")
        chunked = small.post("/search/text", content=iter([b'{"query": "', b"x" * 30_000, b'"}']),
                             headers={"content-type": "application/json"})  # no Content-Length
        error_of(chunked, 413, "upload_too_large")
        assert small.post("/search/text", json={"query": "red"}).status_code == 200


# ---- indexed images -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/images/20", "/images/-1", "/thumbnails/999"])
def test_unknown_image_rows_are_404(client: TestClient, path: str) -> None:
    error_of(client.get(path), 404, "no_such_image")


@pytest.mark.parametrize("path", ["/images/..%2F..%2Fetc%2Fpasswd", "/images/%2Fetc%2Fpasswd",
                                  "/thumbnails/abc"])
def test_images_are_never_served_by_path(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422) and "root:" not in response.text


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    error_of(client.get("/nope"), 404, "not_found")
    error_of(client.get("/search/text"), 405, "method_not_allowed")


# ---- pairing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth_product(tmp_path_factory: pytest.TempPathFactory):
    products, _ = read_products(make_products(tmp_path_factory.mktemp("truth"), 2, seed=5, size=64))
    return max(products, key=lambda p: len(p.images))


def test_pair_tags_every_image_and_returns_costs(client: TestClient, truth_product) -> None:
    p = truth_product
    body = client.post("/pair", files=product_files(p),
                       data={"tags": p.optional_tags, "product_id": p.product_id}).json()
    assert body["product_id"] == p.product_id and body["tags"] == p.optional_tags
    assert body["assign"] == "exact"
    assert [i["name"] for i in body["images"]] == p.images == body["cost_rows"]
    assert len(body["cost"]) == len(p.images) and all(len(r) == len(p.optional_tags) for r in body["cost"])
    tags = [i["tag"] for i in body["images"]]
    assert set(tags) == set(p.optional_tags)  # exact assignment shows every option
    assert all(0 < i["confidence"] <= 1 for i in body["images"])
    right = sum(t == truth for t, truth in zip(tags, p.tags, strict=True))
    assert right >= len(tags) / 2  # generated colours are easy; chance is 1/len(tags)


def test_pair_accepts_tags_one_per_line_and_an_assignment_override(client: TestClient, truth_product) -> None:
    p = truth_product
    body = client.post("/pair", files=product_files(p),
                       data={"tags": "\n".join(p.optional_tags), "assign": "argmin"}).json()
    assert body["tags"] == p.optional_tags and body["assign"] == "argmin" and body["product_id"] == "upload"


@pytest.mark.parametrize(("files", "data", "status", "code"), [
    ([upload("a.png", png_bytes())], {"tags": ["", " "]}, 422, "no_tags"),
    ([upload("a.png", png_bytes())], {"tags": ["黑色", "黑色"]}, 422, "duplicate_tag"),
    ([upload("a.png", png_bytes())], {"tags": [f"t{i}" for i in range(65)]}, 422, "too_many_tags"),
    ([upload("a.png", png_bytes())], {"tags": ["x" * 201]}, 422, "bad_tag"),
    ([upload("a.png", png_bytes()), upload("b.png", b"GIF89a junk")], {"tags": ["黑"]}, 422, "bad_image"),
    ([upload("a.png", png_bytes()), upload("a.png", png_bytes())], {"tags": ["黑"]}, 422, "duplicate_image"),
    ([upload("/etc/a.png", png_bytes())], {"tags": ["黑色"]}, 422, "bad_image_name"),
    ([upload("a.png", png_bytes())], {"tags": ["黑色"], "product_id": "../p"}, 422, "bad_product_id"),
    ([upload("a.png", png_bytes())], {"tags": ["黑色"], "assign": "vote"}, 422, "invalid_request"),
    ([upload(f"{i}.png", png_bytes(size=8)) for i in range(33)], {"tags": ["黑色"]}, 413, "too_many_images"),
    ([], {"tags": ["黑色"]}, 422, "invalid_request"),
    ([upload("a.png", png_bytes())], {}, 422, "invalid_request"),
])
def test_pair_refuses_bad_uploads(client: TestClient, files, data, status: int, code: str) -> None:
    error_of(client.post("/pair", files=files, data=data), status, code)


def test_pair_and_search_without_their_models_say_how_to_start(built: Built, tmp_path: Path,
                                                               services: Services) -> None:
    settings = settings_for(built, tmp_path)
    with TestClient(create_app(settings, Services(search=services.search))) as search_only:
        error_of(search_only.post("/pair", files=[upload("a.png", png_bytes())], data={"tags": ["x"]}),
                 404, "not_configured")
        error_of(search_only.post("/review/load", json={"folder": "batch1"}), 404, "not_configured")
        assert search_only.get("/health").json()["pairing"] is False
    with TestClient(create_app(settings, Services(pairing=services.pairing))) as pairing_only:
        error = error_of(pairing_only.post("/search/text", json={"query": "red"}), 404, "not_configured")
        assert "--index" in error["message"]
        error_of(pairing_only.get("/images/0"), 404, "not_configured")
        assert pairing_only.get("/info").json()["search"] is None


# ---- review -------------------------------------------------------------------------------


def test_review_lists_the_folders_under_the_root_only(client: TestClient) -> None:
    found = client.get("/review/folders").json()
    assert found["folders"] == ["batch1", "batch2"]  # not 'sneaky', a link that leads out


def load(client: TestClient, folder: str) -> dict:
    response = client.post("/review/load", json={"folder": folder})
    assert response.status_code == 200, response.text
    return response.json()


def test_review_load_proposes_tags_and_serves_images_by_id(client: TestClient, built: Built) -> None:
    batch = load(client, "batch1")
    assert batch["label"] == "batch1" and batch["assign"] == "exact" and len(batch["products"]) == 3
    expected, _ = read_products(built.products_root / "batch1")
    for product, truth in zip(batch["products"], expected, strict=True):
        assert product["product_id"] == truth.product_id and product["tags"] == truth.optional_tags
        assert [i["name"] for i in product["images"]] == truth.images
        assert all(i["tag"] in truth.optional_tags for i in product["images"])
        image = product["images"][-1]
        served = client.get(image["image_url"])
        assert served.status_code == 200 and served.content == truth.image_path(image["name"]).read_bytes()
    assert client.get(f"/review/batches/{batch['batch_id']}").json()["products"] == batch["products"]


def test_review_loads_one_product_folder(client: TestClient, built: Built) -> None:
    pid = sorted(p.name for p in (built.products_root / "batch2").iterdir())[0]
    batch = load(client, f"batch2/{pid}")
    assert [p["product_id"] for p in batch["products"]] == [pid]


def test_review_export_writes_the_corrected_final_json(client: TestClient, built: Built) -> None:
    batch = load(client, "batch1")
    first = batch["products"][0]
    old = first["images"][0]["tag"]
    new = next(t for t in first["tags"] if t != old)
    tags = {first["product_id"]: [new] + [i["tag"] for i in first["images"][1:]]}
    result = client.post(f"/review/batches/{batch['batch_id']}/export", json={"tags": tags}).json()
    assert result["changed"] == 1 and result["products"] == 3
    path = Path(result["path"])
    assert path.name == "final_json.json" and path.parent.name == "batch1"
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written == result["final_json"]
    assert list(written) == [p["product_id"] for p in batch["products"]]
    for product in batch["products"]:
        want = [i["tag"] for i in product["images"]]
        if product is first:
            want[0] = new
        got = written[product["product_id"]]
        assert got["optional_tags"] == product["tags"]
        assert got["imgs_tags"] == [{i["name"]: t} for i, t in zip(product["images"], want, strict=True)]
    # the library reads it back (it is the layout of `emit pair predict`)
    back, problems = read_products(path, image_root=built.products_root / "batch1")
    assert not problems and back[0].tags[0] == new
    download = client.get(result["download_url"])
    assert download.json() == written and "attachment" in download.headers["content-disposition"]
    assert not list(path.parent.glob(".*.tmp"))  # the atomic writer left nothing behind


def test_review_export_refuses_unknown_tags_and_keeps_the_old_file(client: TestClient) -> None:
    batch = load(client, "batch2")
    url = f"/review/batches/{batch['batch_id']}/export"
    first = client.post(url, json={}).json()
    before = Path(first["path"]).read_bytes()
    product = batch["products"][0]
    bad = [i["tag"] for i in product["images"]]
    bad[-1] = "紫色不存在"
    error = error_of(client.post(url, json={"tags": {product["product_id"]: bad}}), 422, "unknown_tag")
    assert error["details"][0]["tag"] == "紫色不存在" and error["details"][0]["allowed"] == product["tags"]
    assert Path(first["path"]).read_bytes() == before
    error_of(client.post(url, json={"tags": {product["product_id"]: bad[:-1]}}), 422, "wrong_image_count")
    error_of(client.post(url, json={"tags": {"no-such-product": []}}), 422, "unknown_product")
    error_of(client.post(url, json={"tags": {product["product_id"]: "黑色"}}), 422, "invalid_request")
    error_of(client.post(url, content=b'{"tags": {', headers={"content-type": "application/json"}), 400,
             "malformed_json")
    none = [None] * len(product["images"])  # clearing a tag is allowed: it is written as ""
    cleared = client.post(url, json={"tags": {product["product_id"]: none}}).json()
    entries = cleared["final_json"][product["product_id"]]["imgs_tags"]
    assert all(v == "" for entry in entries for v in entry.values())


@pytest.mark.parametrize(("folder", "status", "code"), [
    ("../outside", 403, "outside_products_root"),
    ("batch1/../../outside", 403, "outside_products_root"),
    ("/etc", 403, "outside_products_root"),
    ("C:\\Windows", 403, "outside_products_root"),
    ("sneaky", 403, "outside_products_root"),
    ("no-such-batch", 404, "no_such_folder"),
    ("   ", 422, "bad_folder"),
    ("", 422, "invalid_request"),
])
def test_review_refuses_folders_outside_the_root(client: TestClient, folder: str, status: int,
                                                 code: str) -> None:
    error_of(client.post("/review/load", json={"folder": folder}), status, code)


def test_review_refuses_a_folder_without_products(client: TestClient, built: Built) -> None:
    (built.products_root / "empty").mkdir(exist_ok=True)
    error_of(client.post("/review/load", json={"folder": "empty"}), 422, "no_products")


def test_review_upload_then_export(client: TestClient, truth_product) -> None:
    p = truth_product
    response = client.post("/review/upload", files=product_files(p),
                           data={"tags": p.optional_tags, "product_id": p.product_id})
    batch = response.json()
    assert batch["source"] == "upload" and batch["products"][0]["product_id"] == p.product_id
    image = batch["products"][0]["images"][0]
    assert client.get(image["image_url"]).content == p.image_path(image["name"]).read_bytes()
    result = client.post(f"/review/batches/{batch['batch_id']}/export", json={}).json()
    assert Path(result["path"]).parent.name.startswith(f"upload-{p.product_id}-")
    assert list(result["final_json"]) == [p.product_id]


def test_review_serves_an_upload_only_as_an_image_or_as_bytes(client: TestClient) -> None:
    # a valid image named like a page must not come back as a page of this site
    files = [upload("x.html", png_bytes(), "text/html"), upload("y.png", png_bytes((0, 0, 200)))]
    batch = client.post("/review/upload", files=files, data={"tags": ["红色", "蓝色"]}).json()
    page, image = (client.get(i["image_url"]) for i in batch["products"][0]["images"])
    assert page.status_code == 200 and page.content == png_bytes()
    assert page.headers["content-type"] == "application/octet-stream"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert image.headers["content-type"] == "image/png"


def test_review_export_that_cannot_be_written_says_why(built: Built, tmp_path: Path,
                                                        services: Services) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the export folder should be")
    app = create_app(replace(settings_for(built, tmp_path), export_dir=blocker / "exports"), services)
    with TestClient(app) as c:
        batch = load(c, "batch2")
        error = error_of(c.post(f"/review/batches/{batch['batch_id']}/export", json={}), 500, "export_failed")
        assert str(blocker / "exports") in error["message"]
        error_of(c.get(f"/review/batches/{batch['batch_id']}/final_json.json"), 404, "not_exported")


def test_review_unknown_batches_images_and_exports(client: TestClient) -> None:
    error_of(client.get("/review/batches/nope"), 404, "unknown_batch")
    error_of(client.post("/review/batches/nope/export", json={}), 404, "unknown_batch")
    batch = load(client, "batch2")
    bid, pid = batch["batch_id"], batch["products"][0]["product_id"]
    error_of(client.get(f"/review/batches/{bid}/final_json.json"), 404, "not_exported")
    error_of(client.get(f"/review/batches/{bid}/images/{pid}/99"), 404, "no_such_image")
    error_of(client.get(f"/review/batches/{bid}/images/other/0"), 404, "unknown_product")


def test_review_keeps_only_the_newest_batches(built: Built, tmp_path: Path, services: Services) -> None:
    with small_app(built, tmp_path, services, max_batches=1) as small:
        first = load(small, "batch2")["batch_id"]
        second = load(small, "batch2")["batch_id"]
        error_of(small.get(f"/review/batches/{first}"), 404, "unknown_batch")
        assert small.get(f"/review/batches/{second}").status_code == 200


def test_review_refuses_batches_over_the_product_limit(built: Built, tmp_path: Path,
                                                       services: Services) -> None:
    with small_app(built, tmp_path, services, max_products=2) as small:
        error_of(small.post("/review/load", json={"folder": "batch1"}), 413, "too_many_products")


# ---- errors and logs ----------------------------------------------------------------------


def test_unexpected_errors_are_logged_and_answered_without_a_traceback(
        built: Built, tmp_path: Path, services: Services, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings_for(built, tmp_path), services)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.INFO):
        response = c.get("/boom")
    body = error_of(response, 500, "internal_error")
    assert "secret" not in response.text and body["request_id"] in body["message"]
    logged = [r for r in caplog.records if r.name == "emit.serve" and r.exc_info]
    assert logged and "secret internals" in str(logged[0].exc_info[1])
    access = [r.fields for r in caplog.records if r.name == "emit.serve.access"]
    assert {"path": "/boom", "status": 500}.items() <= access[-1].items()


def test_every_request_gets_a_json_access_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    from emit.serve.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="emit.serve.access"):
        response = client.post("/search/text", json={"query": "red", "top_k": 2})
    record = [r for r in caplog.records if r.name == "emit.serve.access"][-1]
    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "POST" and line["path"] == "/search/text" and line["status"] == 200
    assert line["ms"] >= 0 and line["request_id"] == response.headers["x-request-id"]
    assert line["level"] == "info" and line["msg"] == "request"
