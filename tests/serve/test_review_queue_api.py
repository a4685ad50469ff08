"""Review queues in the service: POST /review/queue opens a queue written by the library
(emit.pairing.review_queue), least confident first with its tags; GET /review/queues lists them;
and the review page opens one from its address (?queue=...)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from emit.data.products import Product, read_products
from emit.data.synthetic import make_products
from emit.pairing.review_queue import build_review_queue, review_path, write_review_queue
from emit.problems import ProblemLog
from emit.serve.app import create_app
from emit.serve.services import Services
from emit.serve.settings import Limits, ServeSettings

QUEUE = "out/final_json.review.json"


@dataclass(frozen=True)
class Root:
    path: Path  # the products root
    data: Path  # data/: products that were "predicted"
    outside: Path  # products outside the root
    products: dict[str, Product]


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert body["message"] and "Traceback" not in body["message"]
    return body


def proposed(product: Product) -> list[str | None]:
    """A tag per image, as a prediction would give: some option of the product, one image unreadable."""
    tags: list[str | None] = [product.optional_tags[k % len(product.optional_tags)]
                              for k in range(len(product.images))]
    tags[-1] = None
    return tags


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    base = tmp_path_factory.mktemp("queue-root")
    top = base / "products"
    data = make_products(top / "data", 4, seed=5, size=32, with_truth=False)
    outside = make_products(base / "outside", 1, seed=6, size=32, with_truth=False)
    products, _ = read_products(data)
    return Root(top, data, outside, {p.product_id: p for p in products})


def write_queue(root: Root, confidence: dict[str, float], *, name: str = QUEUE, data: Path | None = None,
                tags: dict[str, list[str | None]] | None = None, threshold: float = 0.9) -> str:
    predictions = root.path / name.removesuffix(".review.json")
    tags = tags or {pid: proposed(p) for pid, p in root.products.items()}
    predictions = predictions.with_suffix(".json")
    queue = build_review_queue(threshold, data or root.data, predictions, confidence, tags)
    path = root.path / name
    assert review_path(predictions) == path
    write_review_queue(path, queue)
    return name


def make_client(root: Root, exports: Path, services: Services | None = None, **limits: int) -> TestClient:
    settings = ServeSettings(products_root=root.path, export_dir=exports, limits=Limits(**limits))
    return TestClient(create_app(settings, services or Services()))  # no model: a queue needs none


@pytest.fixture(scope="module")
def client(root: Root, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(root, tmp_path_factory.mktemp("exports")) as c:
        yield c


def open_queue(client: TestClient, file: str) -> dict:
    response = client.post("/review/queue", json={"file": file})
    assert response.status_code == 200, response.text
    return response.json()


def confidences(root: Root) -> dict[str, float]:
    # the first product is the most sure (above the threshold), the others below in reverse order
    ids = sorted(root.products)
    return {ids[0]: 0.97, ids[1]: 0.8, ids[2]: 0.3, ids[3]: 0.55}


# ---- opening a queue ----------------------------------------------------------------------


def test_a_queue_opens_least_confident_first_with_its_tags_and_confidences(client: TestClient,
                                                                           root: Root) -> None:
    conf = confidences(root)
    batch = open_queue(client, write_queue(root, conf))
    ids = [p["product_id"] for p in batch["products"]]
    assert ids == sorted((pid for pid in conf if conf[pid] < 0.9), key=conf.get)  # least confident first
    assert batch["queue"] == {"file": QUEUE, "data": "data", "threshold": 0.9, "listed": 3}
    assert batch["source"] == f"queue:{QUEUE}" and batch["problems"] == []
    for item in batch["products"]:
        truth = root.products[item["product_id"]]
        assert item["confidence"] == conf[item["product_id"]]
        assert item["tags"] == truth.optional_tags
        assert [i["name"] for i in item["images"]] == truth.images
        assert [i["tag"] for i in item["images"]] == proposed(truth)  # the queue's, not predicted again
        assert all(i["confidence"] is None for i in item["images"])  # the queue has none per image
        assert item["cost"] == [] and item["cost_rows"] == []
        served = client.get(item["images"][0]["image_url"])
        assert served.status_code == 200 and served.content == truth.image_path(truth.images[0]).read_bytes()
    again = client.get(f"/review/batches/{batch['batch_id']}").json()
    assert again["products"] == batch["products"] and again["queue"] == batch["queue"]


def test_export_after_opening_a_queue(client: TestClient, root: Root) -> None:
    batch = open_queue(client, write_queue(root, confidences(root)))
    first = batch["products"][0]
    tags = [i["tag"] for i in first["images"]]
    tags[-1] = first["tags"][0]  # the unreadable image gets a tag from the reviewer
    url = f"/review/batches/{batch['batch_id']}/export"
    result = client.post(url, json={"tags": {first["product_id"]: tags}})
    assert result.status_code == 200, result.text
    result = result.json()
    assert result["changed"] == 1 and result["products"] == 3
    path = Path(result["path"])
    assert path.name == "final_json.json" and path.parent.name == "out__final_json.review"
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written == result["final_json"]
    assert list(written) == [p["product_id"] for p in batch["products"]]  # the queue's products only
    assert written[first["product_id"]]["imgs_tags"][-1] == {first["images"][-1]["name"]: first["tags"][0]}
    second = batch["products"][1]
    assert written[second["product_id"]]["imgs_tags"][-1] == {second["images"][-1]["name"]: ""}
    assert client.get(result["download_url"]).json() == written
    assert client.get(f"/review/batches/{batch['batch_id']}").json()["export_path"] == str(path)


def test_queued_products_that_are_gone_or_changed_are_problems_not_failures(client: TestClient,
                                                                             root: Root) -> None:
    ids = sorted(root.products)
    tags = {pid: proposed(p) for pid, p in root.products.items()}
    tags["gone-product"] = ["红色"]
    tags[ids[1]] = [*tags[ids[1]], "红色"]  # one tag more than its images: the folder changed since
    tags[ids[2]] = ["不再是选项", *tags[ids[2]][1:]]  # a tag that is no longer an option
    conf = {"gone-product": 0.1, ids[1]: 0.2, ids[2]: 0.3}
    batch = open_queue(client, write_queue(root, conf, name="changed/final_json.review.json", tags=tags))
    assert [p["product_id"] for p in batch["products"]] == [ids[2]]
    assert batch["products"][0]["images"][0]["tag"] is None
    assert batch["queue"]["listed"] == 3
    problems = {p["record"]: p for p in batch["problems"]}
    assert "not read from its data" in problems["gone-product"]["what"]
    assert problems["gone-product"]["where"] == "data"  # relative to the root
    assert "changed since the prediction" in problems[ids[1]]["what"]
    retagged = problems[f"{ids[2]} image {root.products[ids[2]].images[0]}"]
    assert "no longer one of the product's option tags" in retagged["what"]


def test_an_empty_queue_and_one_over_the_product_limit(client: TestClient, root: Root,
                                                        tmp_path: Path) -> None:
    file = write_queue(root, {pid: 0.99 for pid in root.products}, name="sure/final_json.review.json")
    error = error_of(client.post("/review/queue", json={"file": file}), 422, "empty_queue")
    assert "90%" in error["message"]
    file = write_queue(root, confidences(root), name="big/final_json.review.json")
    with make_client(root, tmp_path, max_products=2) as small:
        error = error_of(small.post("/review/queue", json={"file": file}), 413, "too_many_products")
        assert "lists 3 products" in error["message"]


# ---- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(("file", "status", "code"), [
    ("../outside.review.json", 403, "outside_products_root"),
    ("out/../../outside.review.json", 403, "outside_products_root"),
    ("/etc/passwd", 403, "outside_products_root"),
    ("C:\\x.review.json", 403, "outside_products_root"),
    ("linked.review.json", 403, "outside_products_root"),
    ("nope.review.json", 404, "no_such_file"),
    ("data", 404, "no_such_file"),
    ("out/final_json.json", 422, "bad_file"),
    ("  ", 422, "bad_file"),
    ("", 422, "invalid_request"),
])
def test_a_queue_outside_the_root_or_not_a_queue_is_refused(client: TestClient, root: Root, file: str,
                                                            status: int, code: str) -> None:
    write_queue(root, confidences(root))
    (root.path / "out" / "final_json.json").write_text("{}", encoding="utf-8")
    outside_queue = root.path.parent / "outside.review.json"
    outside_queue.write_text((root.path / QUEUE).read_text(encoding="utf-8"), encoding="utf-8")
    link = root.path / "linked.review.json"
    if not link.is_symlink():
        link.symlink_to(outside_queue)  # a link in the root to a queue outside it
    error_of(client.post("/review/queue", json={"file": file}), status, code)


def test_a_queue_whose_data_is_outside_the_root_is_refused(client: TestClient, root: Root) -> None:
    pid = next(p.name for p in root.outside.iterdir())
    outside_products, _ = read_products(root.outside)
    tags = {pid: proposed(outside_products[0])}
    file = write_queue(root, {pid: 0.2}, name="far/final_json.review.json", data=root.outside, tags=tags)
    error = error_of(client.post("/review/queue", json={"file": file}), 403, "outside_products_root")
    assert "move the data under the products root" in error["message"]
    link = root.path / "data-link"  # inside the root as written, but a link that leads out
    if not link.is_symlink():
        link.symlink_to(root.outside, target_is_directory=True)
    file = write_queue(root, {pid: 0.2}, name="linked/final_json.review.json", data=link, tags=tags)
    error = error_of(client.post("/review/queue", json={"file": file}), 403, "outside_products_root")
    assert str(root.outside) not in error["message"]  # where the link leads is not said
    file = write_queue(root, {pid: 0.2}, name="moved/final_json.review.json", data=root.path / "moved-away",
                       tags=tags)
    error_of(client.post("/review/queue", json={"file": file}), 404, "no_such_folder")


def test_a_malformed_queue_file_says_what_is_wrong(client: TestClient, root: Root) -> None:
    bad = root.path / "bad" / "final_json.review.json"
    bad.parent.mkdir(exist_ok=True)
    queue = build_review_queue(0.9, root.data, root.path / "bad" / "final_json.json", confidences(root),
                               {pid: proposed(p) for pid, p in root.products.items()})
    queue["products"][1]["confidence"] = "high"
    bad.write_text(json.dumps(queue), encoding="utf-8")
    body = {"file": "bad/final_json.review.json"}
    error = error_of(client.post("/review/queue", json=body), 422, "bad_queue")
    assert error["message"].startswith("bad/final_json.review.json: products[1]")
    assert "confidence 'high'" in error["message"] and "emit pair predict" in error["message"]
    bad.write_text('{"kind": "emit.pairing.review", ', encoding="utf-8")
    error = error_of(client.post("/review/queue", json=body), 422, "bad_queue")
    assert "malformed JSON" in error["message"] and str(root.path) not in error["message"]


def test_queues_need_a_products_root(tmp_path: Path) -> None:
    with TestClient(create_app(ServeSettings(export_dir=tmp_path), Services())) as bare:
        assert bare.get("/review/queues").json() == {"root": None, "queues": []}
        error = error_of(bare.post("/review/queue", json={"file": QUEUE}), 404, "not_configured")
        assert "--products-root" in error["message"]


# ---- listing, and the page ----------------------------------------------------------------


def test_the_queues_under_the_root_are_listed(client: TestClient, root: Root) -> None:
    write_queue(root, confidences(root))
    product_folder = root.data / sorted(root.products)[0]
    (product_folder / "in-product.review.json").write_text("{}", encoding="utf-8")  # not looked into
    elsewhere = root.path.parent / "elsewhere.review.json"
    elsewhere.write_text("{}", encoding="utf-8")
    link = root.path / "listed-link.review.json"
    if not link.is_symlink():
        link.symlink_to(elsewhere)  # leads out of the root: not listed
    found = client.get("/review/queues").json()
    assert found["root"] == str(root.path)
    assert QUEUE in found["queues"] and found["queues"] == sorted(found["queues"], key=lambda q: q.count("/"))
    assert not {"listed-link.review.json", "linked.review.json"} & set(found["queues"])  # links out
    assert not any("in-product" in q for q in found["queues"])
    assert all(q.endswith(".review.json") for q in found["queues"])


def test_the_page_opens_a_queue_from_its_address(client: TestClient) -> None:
    page = client.get("/review?queue=out/final_json.review.json")
    assert page.status_code == 200 and 'id="queue-form"' in page.text and "/static/review.js" in page.text
    script = client.get("/static/review.js").text
    assert 'searchParams.get("queue")' in script  # /review?queue=... opens it on load
    assert '"/review/queue"' in script and '"/review/queues"' in script
    assert "product.confidence" in script
    assert client.get("/static/review.css").status_code == 200


# ---- with the pairing model of the other review tests ---------------------------------------


def test_a_queue_of_the_models_predictions_opens_without_predicting_again(
        shared_services: Services, root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairing = shared_services.pairing
    assert pairing is not None
    products, _ = read_products(root.data)
    decisions = pairing.predict(products, ProblemLog(echo=False))
    conf = {}
    for d in decisions:  # a stand-in for the product's confidence: its images' confidences together
        p = 1.0
        for c in d.confidence:
            p *= c if c is not None else 0.0
        conf[d.product_id] = min(p, 0.999)
    tags = {d.product_id: list(d.tags) for d in decisions}
    file = write_queue(root, conf, name="model/final_json.review.json", tags=tags, threshold=1.0)

    def no_prediction(*args: object, **kwargs: object) -> None:
        raise AssertionError("a queue is opened with its own tags, not predicted again")

    with make_client(root, tmp_path, Services(pairing=pairing)) as c:
        folder = c.post("/review/load", json={"folder": "data"}).json()  # predicted: no confidence
        assert folder["queue"] is None and all(p["confidence"] is None for p in folder["products"])
        monkeypatch.setattr(pairing, "predict", no_prediction)
        batch = open_queue(c, file)
        assert [p["product_id"] for p in batch["products"]] == sorted(conf, key=lambda k: (conf[k], k))
        for item in batch["products"]:
            assert [i["tag"] for i in item["images"]] == tags[item["product_id"]]
        result = c.post(f"/review/batches/{batch['batch_id']}/export", json={}).json()
        assert result["changed"] == 0 and result["products"] == len(products)
