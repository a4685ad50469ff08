"""The service's security model: nothing outside --products-root is read (symbolic links out are
refused when a file is opened, links inside are followed), long names are refused with a 4xx,
a request uvicorn cannot parse still gets emit's JSON error, and the optional bearer token
guards every endpoint but /health and the static pages."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import API_TOKEN, Built, LiveServer, png_bytes, settings_for

import emit.serve.app
from emit.cli import main
from emit.problems import EmitError
from emit.serve.app import PUBLIC_PATHS, create_app, is_public
from emit.serve.middleware import BodyLimit
from emit.serve.services import Services
from emit.serve.settings import ServeSettings, is_loopback

SECRET_JPEG_COLOUR = (1, 2, 3)


def jpeg(colour: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_product(folder: Path, images: dict[str, bytes | None],
                  tags: tuple[str, ...] = ("红色", "蓝色")) -> None:
    """A product folder of the Taobao layout; an image given as None is made by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if data is not None:
            (folder / name).write_bytes(data)
    profile = {"optional_tags": list(tags), "imgs_tags": [{name: ""} for name in images]}
    (folder / "profile.json").write_text(json.dumps(profile, ensure_ascii=False), encoding="utf-8")


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code and body["message"], body
    return body


def app_client(built: Built, services: Services, tmp_path: Path, products_root: Path | None = None,
               **settings: object) -> TestClient:
    base = settings_for(built, tmp_path / "exports")
    if products_root is not None:
        base = replace(base, products_root=products_root)
    return TestClient(create_app(replace(base, **settings), services))


# ---- symbolic links in the products root ---------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """products root/mixed: good, folder-out (links to a product outside), profile-out (its
    profile.json links out), image-out (an image links to a JPEG outside), passwd (an image links
    to /etc/passwd), link-in (an image links to another product's, inside); linked-batch: a
    link to mixed, inside the root. outside/: what must never be read."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    mixed = root / "mixed"
    write_product(mixed / "good", {"good_0.jpg": jpeg((220, 30, 30)), "good_1.jpg": jpeg((30, 30, 220))})
    write_product(outside / "elsewhere", {"elsewhere_0.jpg": jpeg((30, 200, 30))})
    (outside / "secret.jpg").write_bytes(jpeg(SECRET_JPEG_COLOUR))
    (mixed / "folder-out").symlink_to(outside / "elsewhere", target_is_directory=True)
    write_product(mixed / "profile-out", {"profile-out_0.jpg": jpeg((220, 30, 30))})
    (mixed / "profile-out" / "profile.json").unlink()
    (mixed / "profile-out" / "profile.json").symlink_to(outside / "elsewhere" / "profile.json")
    write_product(mixed / "image-out", {"image-out_0.jpg": jpeg((220, 30, 30)), "image-out_1.jpg": None})
    (mixed / "image-out" / "image-out_1.jpg").symlink_to(outside / "secret.jpg")
    write_product(mixed / "passwd", {"passwd_0.jpg": jpeg((30, 30, 220)), "passwd_1.jpg": None})
    (mixed / "passwd" / "passwd_1.jpg").symlink_to("/etc/passwd")
    write_product(mixed / "link-in", {"link-in_0.jpg": None, "link-in_1.jpg": jpeg((220, 30, 30))})
    (mixed / "link-in" / "link-in_0.jpg").symlink_to("../good/good_1.jpg")
    (root / "linked-batch").symlink_to("mixed", target_is_directory=True)
    return root, outside


@pytest.fixture(scope="module")
def hostile_client(built: Built, shared_services: Services, hostile: tuple[Path, Path],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(built, shared_services, tmp_path_factory.mktemp("hostile-exports"), hostile[0]) as c:
        yield c


def test_review_load_refuses_links_out_and_loads_the_good_products(hostile_client: TestClient,
                                                                 hostile: tuple[Path, Path]) -> None:
    _, outside = hostile
    response = hostile_client.post("/review/load", json={"folder": "mixed"})
    assert response.status_code == 200, response.text
    batch = response.json()
    loaded = {p["product_id"]: p for p in batch["products"]}
    assert set(loaded) == {"good", "image-out", "passwd", "link-in"}  # the folder and profile out: refused
    problems = {(p["where"], p["record"]): p for p in batch["problems"]}
    for pid in ("folder-out", "profile-out"):
        problem = problems[(f"mixed/{pid}/profile.json", pid)]
        assert "leads outside" in problem["what"] and "instead of linking" in problem["fix"]
    for where, record in (("mixed/image-out/image-out_1.jpg", "image-out image image-out_1.jpg"),
                          ("mixed/passwd/passwd_1.jpg", "passwd image passwd_1.jpg")):
        problem = problems[(where, record)]
        assert "leads outside" in problem["what"] and "refused" in problem["what"]
    # an image refused is not tagged; the product's other images are
    out_tags = [i["tag"] for i in loaded["image-out"]["images"]]
    assert out_tags[1] is None and out_tags[0] in loaded["image-out"]["tags"]
    assert all(i["tag"] is not None for i in loaded["link-in"]["images"])  # a link inside is followed
    assert str(outside) not in response.text and "/etc/passwd" not in response.text  # nor said where


def test_no_file_outside_the_root_is_ever_served(hostile_client: TestClient,
                                                 hostile: tuple[Path, Path]) -> None:
    root, outside = hostile
    batch = hostile_client.post("/review/load", json={"folder": "mixed"}).json()
    secret, passwd = (outside / "secret.jpg").read_bytes(), Path("/etc/passwd").read_bytes()
    served = {}
    for product in batch["products"]:
        for image in product["images"]:
            response = hostile_client.get(image["image_url"])
            assert response.content not in (secret, passwd)
            served[(product["product_id"], image["name"])] = response
    for key in (("image-out", "image-out_1.jpg"), ("passwd", "passwd_1.jpg")):
        error = error_of(served[key], 403, "outside_products_root")
        assert "symbolic link" in error["message"]
    followed = served[("link-in", "link-in_0.jpg")]
    assert followed.status_code == 200 and followed.content == (root / "mixed/good/good_1.jpg").read_bytes()
    good = served[("good", "good_0.jpg")]
    assert good.headers["content-type"] == "image/jpeg"
    on_disk = (root / "mixed/good/good_0.jpg").read_bytes()
    assert int(good.headers["content-length"]) == len(good.content) == len(on_disk)


def test_a_batch_folder_linked_inside_the_root_is_followed(hostile_client: TestClient) -> None:
    response = hostile_client.post("/review/load", json={"folder": "linked-batch"})
    assert response.status_code == 200, response.text
    loaded = {p["product_id"] for p in response.json()["products"]}
    assert loaded == {"good", "image-out", "passwd", "link-in"}
    assert hostile_client.get("/review/folders").json()["folders"] == ["linked-batch", "mixed"]


def test_an_image_swapped_for_a_link_after_loading_is_refused_when_served(
        built: Built, shared_services: Services, tmp_path: Path) -> None:
    """The check is made when the file is opened, not when the batch was loaded."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_product(root / "b" / "p", {"p_0.jpg": jpeg((220, 30, 30)), "p_1.jpg": jpeg((30, 30, 220))})
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg(SECRET_JPEG_COLOUR))
    with app_client(built, shared_services, tmp_path, root) as c:
        batch = c.post("/review/load", json={"folder": "b"}).json()
        url = batch["products"][0]["images"][1]["image_url"]
        assert c.get(url).status_code == 200
        image = root / "b" / "p" / "p_1.jpg"
        image.unlink()
        image.symlink_to(outside / "secret.jpg")
        error_of(c.get(url), 403, "outside_products_root")
        image.unlink()
        os.mkfifo(image)  # a FIFO would hang a plain open; it is refused at once
        error_of(c.get(url), 404, "no_such_image")


# ---- long names -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(built: Built, shared_services: Services,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(built, shared_services, tmp_path_factory.mktemp("security")) as c:
        yield c


def long_name(chars: int, suffix: str = ".png", letter: str = "x") -> str:
    return letter * (chars - len(suffix)) + suffix


@pytest.mark.parametrize("chars", [238, 252, 255, 300])
@pytest.mark.parametrize("path", ["/pair", "/review/upload"])
def test_an_upload_with_a_long_file_name_is_a_422_not_a_500(client: TestClient, path: str,
                                                            chars: int) -> None:
    files = [("images", (long_name(chars), png_bytes(), "image/png")),
             ("images", ("ok.png", png_bytes(), "image/png"))]
    error = error_of(client.post(path, files=files, data={"tags": ["红色", "蓝色"]}), 422, "bad_image_name")
    assert "bytes long" in error["message"] and "200" in error["message"]


@pytest.mark.parametrize("chars", [252, 255, 300])
def test_an_image_search_with_a_long_file_name_is_a_422_not_a_500(client: TestClient, chars: int) -> None:
    response = client.post("/search/image", files={"image": (long_name(chars), png_bytes(), "image/png")})
    error_of(response, 422, "bad_image_name")


def test_names_up_to_the_limit_are_accepted_and_bytes_not_characters_count(client: TestClient) -> None:
    ok = long_name(200)
    body = client.post("/pair", files=[("images", (ok, png_bytes(), "image/png"))], data={"tags": ["红色"]})
    assert body.status_code == 200 and body.json()["images"][0]["name"] == ok
    chinese = long_name(80, letter="红")  # 80 characters, 236 bytes
    response = client.post("/pair", files=[("images", (chinese, png_bytes(), "image/png"))],
                           data={"tags": ["红色"]})
    error_of(response, 422, "bad_image_name")
    pid = "品" * 100  # 100 characters (the form allows 200), 300 bytes: too long for a folder name
    error_of(client.post("/review/upload", files=[("images", ("a.png", png_bytes(), "image/png"))],
                         data={"tags": ["红色"], "product_id": pid}), 422, "bad_product_id")


def test_an_upload_with_the_longest_product_id_exports(client: TestClient) -> None:
    pid = "品" * 66  # 198 bytes
    batch = client.post("/review/upload", files=[("images", ("a.png", png_bytes(), "image/png"))],
                        data={"tags": ["红色"], "product_id": pid}).json()
    result = client.post(f"/review/batches/{batch['batch_id']}/export", json={})
    assert result.status_code == 200, result.text
    folder = Path(result.json()["path"]).parent
    assert len(folder.name.encode()) <= 100 and folder.name.startswith("upload-品")


@pytest.mark.parametrize(("folder", "code"), [
    ("x" * 256, "bad_folder"), ("batch1/" + "y" * 300, "bad_folder"), ("品" * 90, "bad_folder"),
    ("\ud800", "invalid_request"), ("batch1/\udcff", "invalid_request"),  # lone surrogates: no text
])
def test_a_review_folder_name_no_file_system_can_hold_is_a_422(client: TestClient, folder: str,
                                                               code: str) -> None:
    body = json.dumps({"folder": folder})  # a lone surrogate travels as a \\u escape
    response = client.post("/review/load", content=body.encode(),
                           headers={"content-type": "application/json"})
    error_of(response, 422, code)


def test_a_long_batch_folder_exports_to_a_short_unique_folder(built: Built, shared_services: Services,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, second = "批" * 84, "次" * 84  # 252 bytes each: fine as names, too long joined as one
    write_product(root / first / second / "p1", {"p1_0.jpg": jpeg((220, 30, 30))})
    write_product(root / first / (second[:-1] + "二") / "p2", {"p2_0.jpg": jpeg((30, 30, 220))})
    with app_client(built, shared_services, tmp_path, root) as c:
        exported = []
        for name in (second, second[:-1] + "二"):
            batch = c.post("/review/load", json={"folder": f"{first}/{name}"}).json()
            result = c.post(f"/review/batches/{batch['batch_id']}/export", json={})
            assert result.status_code == 200, result.text
            exported.append(Path(result.json()["path"]).parent.name)
    assert all(len(n.encode()) <= 100 for n in exported) and exported[0] != exported[1]


# ---- requests uvicorn cannot parse ----------------------------------------------------------


def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("request_bytes", [
    b"POST /search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: abc\r\n\r\n{}",
    b"POST /search/text HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
])
def test_a_request_uvicorn_cannot_parse_gets_the_json_error(live_server: LiveServer,
                                                            request_bytes: bytes) -> None:
    status, headers, body = raw_request(live_server.url, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["error"] == "bad_request" and "not valid HTTP" in error["message"]
    assert httpx.get(live_server.url + "/health").status_code == 200  # and the server goes on


def test_a_bad_content_length_that_reaches_the_app_is_a_json_400() -> None:
    """Behind another server than uvicorn the header may reach the app: BodyLimit answers it."""
    called: list[bool] = []

    async def inner(scope, receive, send) -> None:
        called.append(True)

    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    import asyncio

    for value in (b"abc", b"-1", b"1e3", b""):
        sent.clear()
        scope = {"type": "http", "headers": [(b"content-length", value)], "state": {"request_id": "r1"}}
        asyncio.run(BodyLimit(inner, max_bytes=100)(scope, receive, send))
        assert sent[0]["status"] == 400 and (b"content-type", b"application/json") in sent[0]["headers"]
        body = json.loads(sent[1]["body"])
        assert body["error"] == "bad_request" and "Content-Length" in body["message"]
        assert body["request_id"] == "r1"
    assert not called
    asyncio.run(BodyLimit(inner, max_bytes=100)({"type": "http", "headers": [(b"content-length", b"5")]},
                                                receive, send))
    assert called == [True]


# ---- the bearer token -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_client(built: Built, shared_services: Services, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[TestClient]:
    with app_client(built, shared_services, tmp_path_factory.mktemp("token"), api_token=API_TOKEN) as c:
        yield c


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def operations(client: TestClient) -> list[tuple[str, str, dict]]:
    schema = client.get("/openapi.json").json()
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_every_api_operation_needs_the_token(token_client: TestClient) -> None:
    ops = operations(token_client)
    assert len(ops) >= 14
    guarded = [(m, p) for m, p, _ in ops if not is_public(p)]
    assert {("GET", "/info"), ("POST", "/review/load"), ("GET", "/images/{row}")} <= set(guarded)
    assert [(m, p) for m, p, _ in ops if is_public(p)] == [("GET", "/health")]
    for method, path in guarded:
        url = path.replace("{", "").replace("}", "")  # any value: the token is checked first
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": API_TOKEN},
                        {"Authorization": f"Basic {API_TOKEN}"}):
            response = token_client.request(method, url, headers=headers)
            error = error_of(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert API_TOKEN not in response.text
            if headers:
                assert 'error="invalid_token"' in response.headers["www-authenticate"]
            else:
                assert "Authorization: Bearer" in error["message"]


def test_the_right_token_opens_every_endpoint(token_client: TestClient) -> None:
    assert token_client.get("/info", headers=AUTH).json()["pairing"] is not None
    found = token_client.post("/search/text", json={"query": "red", "top_k": 2}, headers=AUTH)
    assert found.status_code == 200
    thumb = token_client.get(found.json()["results"][0]["thumbnail_url"], headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    batch = token_client.post("/review/load", json={"folder": "batch1"}, headers=AUTH).json()
    image = token_client.get(batch["products"][0]["images"][0]["image_url"], headers=AUTH)
    assert image.status_code == 200
    exported = token_client.post(f"/review/batches/{batch['batch_id']}/export", json={}, headers=AUTH)
    assert exported.status_code == 200
    download = token_client.get(exported.json()["download_url"], headers=AUTH)
    assert download.json() == exported.json()["final_json"]
    assert token_client.get("/info", headers={"Authorization": f"bearer   {API_TOKEN} "}).status_code == 200


def test_health_and_the_static_pages_need_no_token(token_client: TestClient) -> None:
    for path in [*sorted(PUBLIC_PATHS), "/static/common.js", "/static/style.css",
                 "/static-offline-docs/swagger-ui-bundle.js"]:
        response = token_client.get(path)
        assert response.status_code == 200, (path, response.text[:200])
        assert API_TOKEN not in response.text
    assert token_client.get("/health").json()["status"] == "ok"


def test_the_schema_declares_the_token(token_client: TestClient, client: TestClient) -> None:
    schema = token_client.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "--api-token" in scheme["description"]
    for method, path, op in operations(token_client):
        if path == "/health":
            assert "security" not in op
        else:
            assert op["security"] == [{"bearer": []}] and "401" in op["responses"], (method, path)
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})  # no token: none


def test_a_request_without_the_token_is_refused_before_its_body_is_read(
        built: Built, shared_services: Services, tmp_path: Path) -> None:
    with app_client(built, shared_services, tmp_path, api_token=API_TOKEN,
                    limits=replace(settings_for(built, tmp_path).limits, max_upload_bytes=1000)) as c:
        big = [("images", ("a.png", b"\0" * 5000, "image/png"))]
        error_of(c.post("/pair", files=big, data={"tags": ["红"]}), 401, "unauthorized")  # not 413
        error_of(c.post("/pair", files=big, data={"tags": ["红"]}, headers=AUTH), 413, "upload_too_large")


def test_a_live_server_with_a_token(token_server: LiveServer) -> None:
    error_of(httpx.get(token_server.url + "/info"), 401, "unauthorized")
    assert httpx.get(token_server.url + "/info", headers=AUTH).status_code == 200
    assert httpx.get(token_server.url + "/health").status_code == 200
    assert API_TOKEN not in token_server.log.read_text(encoding="utf-8")  # never logged


# ---- the non-loopback rule and the settings ---------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.1", False), ("example.com", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_host_needs_a_token_or_an_explicit_opt_out() -> None:
    env = {"EMIT_PAIRING_MODEL": "m"}
    with pytest.raises(EmitError, match="--api-token") as info:
        ServeSettings.from_env(env, host="0.0.0.0")
    assert "--insecure-no-token" in str(info.value)
    with_token = ServeSettings.from_env({**env, "EMIT_API_TOKEN": API_TOKEN}, host="0.0.0.0")
    assert with_token.api_token == API_TOKEN and API_TOKEN not in repr(with_token)
    opted_out = ServeSettings.from_env(env, host="0.0.0.0", insecure_no_token="1")
    assert opted_out.api_token is None and opted_out.exposed_without_token
    exposed = ServeSettings.from_env({**env, "EMIT_INSECURE_NO_TOKEN": "yes", "EMIT_HOST": "::"})
    assert exposed.insecure_no_token
    assert not ServeSettings.from_env(env).exposed_without_token  # 127.0.0.1: no token needed


@pytest.mark.parametrize(("env", "says"), [
    ({"EMIT_API_TOKEN": "short"}, "at least 16"),
    ({"EMIT_API_TOKEN": "has spaces in it, sixteen+"}, "printable ASCII"),
    ({"EMIT_API_TOKEN": "ünïcödé-tökén-0123456789"}, "printable ASCII"),
    ({"EMIT_INSECURE_NO_TOKEN": "perhaps"}, "EMIT_INSECURE_NO_TOKEN"),
])
def test_bad_token_settings_stop_start_up(env: dict[str, str], says: str) -> None:
    with pytest.raises(EmitError, match=says):
        ServeSettings.from_env({"EMIT_PAIRING_MODEL": "m", **env})


def test_the_cli_passes_the_token_and_refuses_an_open_host(built: Built, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    started: list[ServeSettings] = []
    monkeypatch.setattr(emit.serve.app, "run", lambda settings: started.append(settings) or 0)
    monkeypatch.delenv("EMIT_API_TOKEN", raising=False)
    model = str(built.pairing_model)
    assert main(["serve", "--threads", "1", "--pairing-model", model, "--host", "0.0.0.0"]) == 2
    assert "--api-token" in caplog.text and not started
    assert main(["serve", "--threads", "1", "--pairing-model", model, "--host", "0.0.0.0",
                 "--api-token", API_TOKEN]) == 0
    assert main(["serve", "--threads", "1", "--pairing-model", model, "--host", "0.0.0.0",
                 "--insecure-no-token"]) == 0
    monkeypatch.setenv("EMIT_API_TOKEN", API_TOKEN)
    assert main(["serve", "--threads", "1", "--pairing-model", model]) == 0
    assert [s.api_token for s in started] == [API_TOKEN, None, API_TOKEN]
    assert [s.insecure_no_token for s in started] == [False, True, False]


def test_serve_runs_on_one_thread_unless_told(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread per request by default (measured faster for a query); --threads still wins."""
    import os

    import torch

    seen: list[int] = []
    monkeypatch.setattr(emit.serve.app, "run", lambda settings: seen.append(torch.get_num_threads()) or 0)
    monkeypatch.setenv("EMIT_API_TOKEN", API_TOKEN)
    before = torch.get_num_threads()
    try:
        assert main(["serve", "--pairing-model", str(built.pairing_model)]) == 0
        assert main(["serve", "--threads", "2", "--pairing-model", str(built.pairing_model)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, min(2, os.cpu_count() or 1)]


def test_the_load_test_sends_the_token(token_server: LiveServer) -> None:
    from emit.serve.loadtest import run_load

    assert run_load(token_server.url, 20, 2, token=API_TOKEN)["status_counts"] == {"200": 20}
    assert run_load(token_server.url, 4, 1, token="")["status_counts"] == {"401": 4}
