"""Property-based fuzzing of the service's OpenAPI schema (schemathesis): whatever a client sends
that the schema allows (positive cases), or that breaks it on purpose (negative cases), the
answer is never a 5xx, and every error is the documented JSON body.

Operations are driven through hypothesis directly: schemathesis's pytest plugin does not run
under pytest 9 (it reads a node attribute that no longer exists).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (dev extra)")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from serve_helpers import Built, png_bytes, settings_for  # noqa: E402

from emit.serve.app import create_app  # noqa: E402

MAX_EXAMPLES = 20  # per operation and mode; the schema has about 15 operations


@pytest.fixture(scope="module")
def fuzzed_app(built: Built, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(settings_for(built, tmp_path_factory.mktemp("fuzz-exports")))


def check(case) -> None:
    response = case.call_and_validate(checks=[not_a_server_error])
    if response.status_code >= 400:
        kind = response.headers.get("content-type") or [""]  # schemathesis keeps every value: a list
        assert kind[0].startswith("application/json"), case.as_curl_command()
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    return response.status_code


def fuzz_operation(operation, mode: GenerationMode) -> list[int]:
    """Statuses of MAX_EXAMPLES generated requests to one operation."""
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
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
def test_no_request_gets_a_server_error(fuzzed_app: FastAPI, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    statuses = {op.label: fuzz_operation(op, mode) for op in operations}
    calls = sum(len(v) for v in statuses.values())
    assert calls >= 100 and {"POST /pair", "POST /search/text", "POST /review/load"} <= set(statuses)
    if mode == GenerationMode.POSITIVE:  # valid requests do succeed sometimes: the fuzzer gets through
        assert 200 in statuses["POST /search/text"] and 200 in statuses["GET /info"]


# ---- a property of POST /pair, with real images ------------------------------------------------

tag_text = st.text(st.characters(categories=("L", "N", "Zs"), exclude_characters="\u2028\u2029"),
                   min_size=1, max_size=8).map(str.strip).filter(bool)


@pytest.fixture(scope="module")
def pair_client(fuzzed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(fuzzed_app) as client:
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
