"""Load test of `emit serve` on loopback: N text searches from C concurrent clients.

    python benchmarks/serve_load.py                      # build a generated index, serve it, load it
    python benchmarks/serve_load.py --url http://127.0.0.1:8000   # an emit serve already running

Without --url it draws 5 colours x 4 shapes x --variants images with captions, trains a small
retrieval model on them (colour-histogram backbone, 8-d word vectors, a one-layer LSTM),
builds an exact index, starts `emit serve --index` on a free loopback port (one uvicorn worker,
one torch thread), sends the requests, and stops the server with SIGTERM. The figures
(p50/p95/p99 latency, throughput, errors) go to benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from emit.data.synthetic import make_shapes
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.jobs import build_index_job, train_job
from emit.serve.loadtest import run_load, write_results

OUT = Path(__file__).resolve().parent / "results" / "serve_load.json"


def build_index(root: Path, variants: int) -> tuple[Path, int]:
    data = make_shapes(root / "shapes", variants)
    cache = root / "cache"
    config = RetrievalConfig(encoder="lstm", lr_schedule="constant", backbone="colour-hist",
                             vectors=str(data["vectors"]), hidden=32, num_layers=1,
                             epochs=30, batch_size=32, lr=0.01, val_fraction=0)
    train_job(data["titles"], data["clicks"], root / "run", config, cache_dir=cache, progress=False)
    summary = build_index_job(root / "run", [data["images"]], root / "idx", cache_dir=cache, progress=False)
    return root / "idx", int(summary["images"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(index: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "emit.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
           "--port", str(port), "--threads", "1", "--log-level", "warning",
           "--cache-dir", str(workdir / "cache"), "--export-dir", str(workdir / "exports")]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"emit serve exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("emit serve did not start within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="load this running server (a loopback address)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--variants", type=int, default=10,
                        help="images per colour and shape (the index holds 20 x variants)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    command = "python benchmarks/serve_load.py " + shlex.join(sys.argv[1:])
    if args.url:
        result = run_load(args.url, args.requests, args.clients, top_k=args.top_k)
        path = write_results(result, args.out, command=command.strip(), server=args.url)
    else:
        with tempfile.TemporaryDirectory(prefix="emit-serve-load-") as tmp:
            workdir = Path(tmp)
            index, images = build_index(workdir, args.variants)
            process, url = serve(index, workdir)
            try:
                run_load(url, 50, 4, top_k=args.top_k)  # warm-up: connections, allocator, caches
                result = run_load(url, args.requests, args.clients, top_k=args.top_k)
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            path = write_results(result, args.out, command=command.strip(), index_images=images,
                                 server="emit serve (one uvicorn worker, --threads 1) on 127.0.0.1",
                                 cpu_load_1min=round(os.getloadavg()[0], 2))
    lat = result["latency_ms"]
    print(f"{result['requests']} requests, {result['concurrency']} clients: {result['errors']} errors, "
          f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, "
          f"{result['requests_per_second']} requests/s -> {path}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
