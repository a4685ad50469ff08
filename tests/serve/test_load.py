"""A bounded load test on loopback: 2,000 text searches from 16 concurrent clients against the real
server. Zero errors is asserted; the latencies are written to benchmarks/results, never asserted.

The figures go to a temporary file, so a test run leaves the checkout as it was; with
EMIT_RECORD_LOAD_TEST=1 they go to benchmarks/results/serve_load_test.json (which holds the last
such recorded run). benchmarks/results/serve_load.json holds ``python benchmarks/serve_load.py``'s."""

from __future__ import annotations

import json
import os
from pathlib import Path

from serve_helpers import LiveServer

from emit.serve.loadtest import run_load, write_results

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serve_load_test.json"
REQUESTS, CLIENTS = 2000, 16


def test_2000_searches_from_16_clients_without_an_error(live_server: LiveServer, tmp_path: Path) -> None:
    result = run_load(live_server.url, REQUESTS, CLIENTS)
    assert result["requests"] == REQUESTS
    assert result["errors"] == 0, result["error_examples"]
    assert result["status_counts"] == {"200": REQUESTS}
    record = os.environ.get("EMIT_RECORD_LOAD_TEST") == "1"
    path = write_results(result, RESULTS if record else tmp_path / RESULTS.name,
                         command="EMIT_RECORD_LOAD_TEST=1 bash scripts/test.sh (tests/serve/test_load.py)",
                         index_images=20, server="emit serve (one uvicorn worker, --threads 1) on 127.0.0.1")
    saved = json.loads(path.read_text())
    assert saved["errors"] == 0 and saved["latency_ms"]["p95"] >= saved["latency_ms"]["p50"] > 0
