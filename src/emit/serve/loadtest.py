"""A bounded load test of a running ``emit serve``: N text searches from C concurrent clients.

Used by ``benchmarks/serve_load.py`` and by the test suite. Each client is a thread with its
own keep-alive connection; the run is bounded by the request count and a per-request timeout,
and targets only the URL it is given (use a loopback address).
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from emit.files import atomic_write_json

QUERIES = ("a red circle", "blue square", "green bar", "yellow triangle", "purple", "square in red",
           "a blue bar", "circle")


def run_load(url: str, requests: int = 2000, concurrency: int = 16, *, top_k: int = 10,
             queries: Sequence[str] = QUERIES, timeout: float = 60.0,
             token: str | None = None) -> dict[str, Any]:
    """POST ``requests`` text searches to ``url``/search/text from ``concurrency`` clients
    (with ``Authorization: Bearer token`` for a server started with --api-token;
    default: ``EMIT_API_TOKEN`` if set)."""
    token = token if token is not None else os.environ.get("EMIT_API_TOKEN") or None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []  # the first few failures, for the report
    failures = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        nonlocal failures
        with httpx.Client(base_url=url, timeout=timeout, headers=headers) as session:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                body = {"query": queries[k % len(queries)], "top_k": top_k}
                start = time.perf_counter()
                try:
                    response = session.post("/search/text", json=body)
                    ok = response.status_code == 200 and len(response.json()["results"]) > 0
                    outcome = str(response.status_code)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    ok, outcome = False, type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[outcome] += 1
                    if not ok:
                        failures += 1
                        if len(errors) < 20:
                            errors.append(f"request {k}: {outcome}")

    threads = [threading.Thread(target=client, name=f"load-{i}") for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "endpoint": "POST /search/text", "requests": len(latencies), "concurrency": concurrency,
        "top_k": top_k, "errors": failures, "error_examples": errors, "status_counts": dict(statuses),
        "seconds": round(seconds, 3), "requests_per_second": round(len(latencies) / seconds, 1),
        "latency_ms": {**{f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                       "mean": round(float(ms.mean()), 2), "max": round(float(ms.max()), 2)},
    }


def write_results(result: dict[str, Any], path: str | os.PathLike[str], **context: Any) -> Path:
    """Save the figures with the machine and the command that produced them."""
    record = {**result, **context,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return atomic_write_json(path, record)
