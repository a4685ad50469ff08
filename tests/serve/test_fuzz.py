"""Property-based fuzzing of the service's OpenAPI schema (schemathesis): whatever a client sends
that the schema allows (positive cases), or that breaks it on purpose (negative cases), the
answer is never a 5xx, and every error is the documented JSON body.

Every operation of the schema is fuzzed, on a server with a token (sent with each case). Random
strings rarely name a folder, a batch or a product that exists, so most cases get one of the
service's real values instead (a folder under the products root, a loaded and exported batch,
its products and images, an index row, a real image to upload): the review endpoints then
really load, serve and export, and are fuzzed past their first check.

Operations are driven through hypothesis directly: schemathesis's pytest plugin does not run
under pytest 9 (it reads a node attribute that no longer exists).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

# Imported plainly, not skipped when missing: the test command installs the dev extra, so a
# missing schemathesis is a broken set-up that must fail, not a fuzz run silently left out.
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from serve_helpers import API_TOKEN, Built, png_bytes, settings_for

from emit.pairing.review_queue import build_review_queue, write_review_queue
from emit.serve.app import create_app
from emit.serve.services import Services

MAX_EXAMPLES = 20  # per operation and mode; the schema has about 15 operations
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def fuzzed_app(built: Built, shared_services: Services, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = replace(settings_for(built, tmp_path_factory.mktemp("fuzz-exports")), api_token=API_TOKEN)
    return create_app(settings, shared_services)


@dataclass(frozen=True)
class Known:
    """Values that exist on the fuzzed server, to put into generated cases."""

    folders: list[str]
    batch_id: str
    products: dict[str, list[str]]  # product id -> its images
    tags: dict[str, list[str]]  # product id -> its option tags
    rows: int
    queue: str  # a review queue under the products root


@pytest.fixture(scope="module")
def known(fuzzed_app: FastAPI, built: Built) -> Iterator[Known]:
    with TestClient(fuzzed_app, headers=AUTH) as client:
        folders = client.get("/review/folders").json()["folders"]
        batch = client.post("/review/load", json={"folder": "batch1"}).json()
        assert client.post(f"/review/batches/{batch['batch_id']}/export", json={}).status_code == 200
        rows = client.get("/info").json()["search"]["images"]["count"]
    products = {p["product_id"]: [i["name"] for i in p["images"]] for p in batch["products"]}
    one = next(iter(products))
    # a review queue of batch1's products, so opening one gets past its first checks; removed after
    queue = built.products_root / "fuzz.review.json"
    tags = {p["product_id"]: [i["tag"] for i in p["images"]] for p in batch["products"]}
    write_review_queue(queue, build_review_queue(1.0, built.products_root / "batch1",
                                                 built.root / "final.json", dict.fromkeys(tags, 0.5), tags))
    yield Known([*folders, f"batch2/{sorted(products)[0]}", f"batch1/{one}"], batch["batch_id"], products,
                {p["product_id"]: p["tags"] for p in batch["products"]}, rows, queue.name)
    queue.unlink()


def with_known(case, known: Known, pick: int) -> None:
    """Replace, in most cases, generated identifiers and files with ones that exist."""
    if pick % 4 == 0:
        return  # a quarter keep what the fuzzer made
    params = case.path_parameters or {}
    pids = sorted(known.products)
    pid = pids[pick % len(pids)]
    if "batch_id" in params:
        params["batch_id"] = known.batch_id
    if "product_id" in params:
        params["product_id"] = pid
    if "index" in params and pick % 3:
        params["index"] = pick % (len(known.products[pid]) + 1)  # one past the end now and then
    if "row" in params and pick % 3:
        params["row"] = pick % (known.rows + 1)
    body = case.body
    if not isinstance(body, dict):
        return
    if "folder" in body:
        body["folder"] = known.folders[pick % len(known.folders)]
    if "file" in body:
        body["file"] = known.queue
    if "tags" in body and isinstance(body["tags"], dict) and pick % 2:  # an export with valid tags
        tags = known.tags[pid]
        body["tags"] = {pid: [tags[(pick + k) % len(tags)] for k, _ in enumerate(known.products[pid])]}
    for field in ("images", "image"):  # uploads: real images, so the pairing or search runs
        if field in body:
            count = 1 + pick % 3
            files = [png_bytes(((40 * k + pick) % 256, 90, 200), size=16) for k in range(count)]
            body[field] = files if field == "images" else files[0]
            if field == "images" and (not isinstance(body.get("tags"), list) or not body["tags"]):
                body["tags"] = ["红色", "蓝色"]


def check(case) -> int:
    case.headers = {**(case.headers or {}), **AUTH}  # the fuzzer's own Authorization is random
    response = case.call_and_validate(checks=[not_a_server_error])
    if response.status_code >= 400:
        kind = response.headers.get("content-type") or [""]  # schemathesis keeps every value: a list
        assert kind[0].startswith("application/json"), case.as_curl_command()
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    return response.status_code


def fuzz_operation(operation, mode: GenerationMode, known: Known) -> list[int]:
    """Statuses of MAX_EXAMPLES generated requests to one operation."""
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode), pick=st.integers(0, 10_000))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case, pick: int) -> None:
        with_known(case, known, pick)
        statuses.append(check(case))

    try:
        fuzz()
    except Unsatisfiable:  # an operation without inputs has no invalid inputs to send
        assert mode == GenerationMode.NEGATIVE
    except Exception as exc:
        raise AssertionError(f"{operation.label} ({mode.value}): {exc}") from exc
    return statuses


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_no_request_gets_a_server_error(fuzzed_app: FastAPI, known: Known, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses = {op.label: fuzz_operation(op, mode, known) for op in operations}
    calls = sum(len(v) for v in statuses.values())
    assert calls >= 100 and {"POST /pair", "POST /search/text", "POST /review/load"} <= set(statuses)
    paths = fuzzed_app.openapi()["paths"]
    every = {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}
    assert set(statuses) == every  # every endpoint, none left out
    if mode == GenerationMode.POSITIVE:  # valid requests do succeed sometimes: the fuzzer gets through
        assert 200 in statuses["POST /search/text"] and 200 in statuses["GET /info"]
        succeeded = {label for label, codes in statuses.items() if 200 in codes}
        assert every - succeeded <= {"POST /search/image"}, sorted(every - succeeded)


# ---- a property of POST /pair, with real images ------------------------------------------------

tag_text = st.text(st.characters(categories=("L", "N", "Zs"), exclude_characters="\u2028\u2029"),
                   min_size=1, max_size=8).map(str.strip).filter(bool)


@pytest.fixture(scope="module")
def pair_client(fuzzed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(fuzzed_app, headers=AUTH) as client:
        yield client


@given(colours=st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=1, max_size=6),
       tags=st.lists(tag_text, min_size=1, max_size=5, unique=True),
       assign=st.sampled_from(["exact", "argmin"]))
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_pair_gives_every_image_one_of_its_tags(pair_client: TestClient, colours, tags, assign) -> None:
    files = [("images", (f"{k}.png", png_bytes(c), "image/png")) for k, c in enumerate(colours)]
    response = pair_client.post("/pair", files=files, data={"tags": tags, "assign": assign})
    assert response.status_code == 200, response.text
    body = response.json()
    chosen = [i["tag"] for i in body["images"]]
    assert body["tags"] == tags and body["assign"] == assign and len(chosen) == len(colours)
    assert all(t in tags for t in chosen) and all(0 < i["confidence"] <= 1 for i in body["images"])
    assert len(body["cost"]) == len(colours) and all(len(row) == len(tags) for row in body["cost"])
    if assign == "exact":
        if len(colours) >= len(tags):
            assert set(chosen) == set(tags)  # every option shown
        else:
            assert len(set(chosen)) == len(chosen)  # fewer images than options: all different
    else:  # argmin: each image its cheapest tag
        for row, tag in zip(body["cost"], chosen, strict=True):
            assert row[tags.index(tag)] == min(row)
