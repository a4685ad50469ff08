"""The real thing: ``emit serve`` in a subprocess on a loopback port, configured by flags and
environment variables; JSON log lines; concurrent requests; graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import Built, LiveServer, start_server

from emit.cli import main
from emit.data.products import read_products


def test_serve_is_configured_by_environment_and_flags(live_server: LiveServer, built: Built) -> None:
    info = httpx.get(live_server.url + "/info").json()
    assert info["search"]["folder"] == str(built.index)  # EMIT_INDEX
    assert info["pairing"]["folder"] == str(built.pairing_model)  # --pairing-model
    assert info["review"]["export_dir"] == str(live_server.export_dir)  # EMIT_EXPORT_DIR


def test_logs_are_json_lines_with_method_path_status_and_ms(live_server: LiveServer) -> None:
    httpx.post(live_server.url + "/search/text", json={"query": "red", "top_k": 3})
    httpx.post(live_server.url + "/search/text", content=b"{", headers={"content-type": "application/json"})
    time.sleep(0.5)  # let the server flush its log
    lines = live_server.log_lines()
    assert all("raw" not in line for line in lines), [line for line in lines if "raw" in line][:3]
    requests = [line for line in lines if line.get("event") == "request" and line["path"] == "/search/text"]
    assert {(r["method"], r["status"]) for r in requests} >= {("POST", 200), ("POST", 400)}
    assert all(isinstance(r["ms"], float | int) and r["request_id"] for r in requests)
    loaded = [line for line in lines if line["msg"] in ("search index loaded", "pairing model loaded")]
    assert len(loaded) == 2  # each loaded once, at start-up, however many requests came


def test_concurrent_searches_and_pairings_agree_with_sequential_ones(live_server: LiveServer,
                                                                      built: Built) -> None:
    products, _ = read_products(built.products_root / "batch1")
    product = products[0]
    files = [("images", (n, product.image_path(n).read_bytes(), "image/jpeg")) for n in product.images]

    def search(query: str) -> list[str]:
        response = httpx.post(live_server.url + "/search/text", json={"query": query, "top_k": 5}, timeout=60)
        assert response.status_code == 200, response.text
        return [h["id"] for h in response.json()["results"]]

    def pair(_: int) -> list[str]:
        response = httpx.post(live_server.url + "/pair", files=files, data={"tags": product.optional_tags},
                              timeout=60)
        assert response.status_code == 200, response.text
        return [i["tag"] for i in response.json()["images"]]

    queries = ["a red circle", "blue square", "green bar", "yellow triangle"] * 4
    alone = {q: search(q) for q in set(queries)}
    paired = pair(0)
    with ThreadPoolExecutor(16) as pool:
        searches = pool.map(search, queries)
        pairs = pool.map(pair, range(8))
        assert [alone[q] for q in queries] == list(searches)
        assert all(p == paired for p in pairs)


def refused(url: str, timeout: float = 30) -> bool:
    """Wait until the server no longer accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=1)
        except httpx.TransportError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_finishes_requests_in_flight_and_exports_stay_whole(built: Built, tmp_path: Path) -> None:
    server = start_server(built, tmp_path)
    try:
        batch = httpx.post(server.url + "/review/load", json={"folder": "batch1"}, timeout=60).json()
        product = batch["products"][0]
        proposed = [i["tag"] for i in product["images"]]
        variants = [[tag, *proposed[1:]] for tag in product["tags"]]  # each a valid correction
        url = f"{server.url}/review/batches/{batch['batch_id']}/export"
        outcomes: list[str] = []
        stop = threading.Event()

        # a pairing whose upload is only half sent when SIGTERM comes: it must still be answered
        (first, *_), _ = read_products(built.products_root / "batch1")
        files = [("images", (n, first.image_path(n).read_bytes(), "image/jpeg")) for n in first.images]
        upload = httpx.Request("POST", server.url + "/pair", files=files, data={"tags": first.optional_tags})
        body = upload.read()
        release = threading.Event()
        slow: dict[str, object] = {}

        def half_then_rest() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            release.wait(60)
            yield body[len(body) // 2:]

        def slow_pair() -> None:
            try:
                response = httpx.post(server.url + "/pair", content=half_then_rest(), timeout=60,
                                      headers={"content-type": upload.headers["content-type"]})
                slow["status"], slow["body"] = response.status_code, response.text
            except httpx.HTTPError as exc:
                slow["status"] = type(exc).__name__

        def export_forever(k: int) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    tags = {product["product_id"]: variants[k % len(variants)]}
                    try:
                        outcomes.append(str(client.post(url, json={"tags": tags}).status_code))
                    except httpx.HTTPError as exc:  # refused once the server has stopped
                        outcomes.append(type(exc).__name__)
                        return

        threads = [threading.Thread(target=export_forever, args=(k,)) for k in range(4)]
        threads.append(threading.Thread(target=slow_pair))
        for t in threads:
            t.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        stopped_taking = refused(server.url)  # new connections are refused ...
        release.set()  # ... while the half-sent upload goes on
        code = server.stop()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        release.set()
        server.stop()
    assert stopped_taking
    assert slow["status"] == 200, slow  # the request in flight was finished, not cut off
    paired = json.loads(str(slow["body"]))
    assert paired["tags"] == first.optional_tags and len(paired["images"]) == len(first.images)
    # uvicorn finishes the requests in flight, runs the app's shutdown, then re-raises the
    # signal, so the process ends "killed by SIGTERM" as service managers expect
    assert code in (0, -signal.SIGTERM), server.log.read_text()[-2000:]
    assert outcomes.count("200") >= 4
    assert "500" not in outcomes
    messages = [line.get("msg", "") for line in server.log_lines()]
    assert "Shutting down" in messages and "shut down; temporary uploads removed" in messages
    assert not any("Cancel" in m for m in messages)  # nothing was cut off by the shutdown timeout
    final = server.export_dir / "batch1" / "final_json.json"
    written = json.loads(final.read_text(encoding="utf-8"))  # whole, not half-written
    first = written[product["product_id"]]["imgs_tags"]
    assert [next(iter(e.values())) for e in first] in variants
    assert not list(final.parent.glob(".*.tmp"))


def errors_of(caplog: pytest.LogCaptureFixture) -> str:
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    caplog.clear()
    return text


def test_serve_without_anything_to_serve_says_what_to_give(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EMIT_INDEX", "EMIT_PAIRING_MODEL"):
        monkeypatch.delenv(var, raising=False)
    assert main(["serve", "--threads", "1"]) == 2
    assert "--index" in errors_of(caplog)


def test_serve_refuses_bad_settings(built: Built, caplog: pytest.LogCaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import emit.serve.app

    monkeypatch.setattr(emit.serve.app, "setup_logging", lambda level: None)  # keep pytest's handlers
    monkeypatch.setenv("EMIT_PORT", "eighty")
    assert main(["serve", "--threads", "1", "--pairing-model", str(built.pairing_model)]) == 2
    assert "EMIT_PORT" in errors_of(caplog)
    monkeypatch.delenv("EMIT_PORT")
    model = str(built.pairing_model)
    assert main(["serve", "--threads", "1", "--pairing-model", model, "--products-root", "/no/such"]) == 2
    assert "products root" in errors_of(caplog)
    missing = str(built.root / "nothing-here")
    assert main(["serve", "--threads", "1", "--index", missing]) == 2  # fails while loading
    assert "nothing-here" in errors_of(caplog)


def test_serve_without_the_serve_extra_says_how_to_install(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import emit.cli.serve

    monkeypatch.setattr(emit.cli.serve, "missing_modules", lambda: ["fastapi", "uvicorn"])
    assert main(["serve", "--threads", "1", "--index", "idx"]) == 2
    assert "pip install 'emit[serve]'" in errors_of(caplog)
