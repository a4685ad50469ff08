"""Helpers of the service tests: build a tiny pairing model on generated products and a tiny
retrieval model and index over generated shapes (colour-histogram backbone, an 8-d word-vector
file), and start a real ``emit serve`` on a free loopback port. Nothing needs ../shared."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from emit.config import PairingConfig
from emit.data.products import read_products
from emit.data.synthetic import make_products, make_shapes
from emit.pairing.pipeline import train_pairing
from emit.retrieval.config import RetrievalConfig
from emit.retrieval.jobs import build_index_job, train_job
from emit.serve.settings import Limits, ServeSettings

API_TOKEN = "test-token-0123456789abcdef"  # what the token-protected test servers are started with


@dataclass(frozen=True)
class Built:
    root: Path
    cache: Path
    shapes: Path  # the indexed images
    run: Path  # retrieval model
    index: Path
    pairing_model: Path
    products_root: Path  # batch1 (3 products), batch2 (2 products)
    outside: Path  # a product folder outside the products root


def _build_retrieval(root: Path, cache: Path) -> tuple[Path, Path, Path]:
    data = make_shapes(root / "shapes")
    config = RetrievalConfig(encoder="lstm", backbone="colour-hist", vectors=str(data["vectors"]),
                             hidden=32, num_layers=1,
                             epochs=60, batch_size=20, lr=0.01, val_fraction=0)
    run = root / "run"
    train_job(data["titles"], data["clicks"], run, config, cache_dir=cache, progress=False)
    index = root / "idx"
    build_index_job(run, [data["images"]], index, texts=data["titles"], cache_dir=cache, progress=False)
    return data["images"], run, index


def _build_pairing(root: Path, cache: Path) -> Path:
    products, _ = read_products(make_products(root / "train", 24, seed=1, size=64))
    config = PairingConfig(backbone="colour-hist", min_count=1, hidden=32, max_epochs=25, patience=5,
                           bag_size=2, lr=3e-3, val_fraction=0.2)
    model = train_pairing(products, config, cache_dir=cache, progress=False)
    return model.save(root / "pairing-model")


def settings_for(built: Built, export_dir: Path, **limits: int) -> ServeSettings:
    return ServeSettings(index=built.index, pairing_model=built.pairing_model,
                         products_root=built.products_root, export_dir=export_dir, cache_dir=built.cache,
                         limits=Limits(**limits))


def png_bytes(colour: tuple[int, int, int] = (200, 30, 35), size: int = 64) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


# ---- a real server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    export_dir: Path
    log: Path

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                lines.append({"raw": line})
        return lines


def start_server(built: Built, workdir: Path, *extra: str, startup_timeout: float = 120) -> LiveServer:
    """``emit serve`` in a subprocess, configured partly by flags and partly by environment variables."""
    port = free_port()
    export_dir = workdir / "exports"
    log = workdir / "server.log"
    env = {**os.environ, "EMIT_INDEX": str(built.index), "EMIT_PORT": str(port),
           "EMIT_CACHE_DIR": str(built.cache), "EMIT_EXPORT_DIR": str(export_dir)}
    cmd = [sys.executable, "-m", "emit.cli", "serve", "--pairing-model", str(built.pairing_model),
           "--products-root", str(built.products_root), "--host", "127.0.0.1", "--threads", "1", *extra]
    with open(log, "wb") as fh:
        process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = LiveServer(f"http://127.0.0.1:{port}", process, export_dir, log)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emit serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"emit serve did not answer within {startup_timeout} s:\n{log.read_text()[-3000:]}")


def build_all(root: Path) -> Built:
    cache = root / "cache"
    shapes, run, index = _build_retrieval(root, cache)
    model = _build_pairing(root, cache)
    products_root = root / "products"
    make_products(products_root / "batch1", 3, seed=2, size=64, with_truth=False)
    make_products(products_root / "batch2", 2, seed=3, size=64, with_truth=False)
    outside = make_products(root / "outside", 1, seed=4, size=64, with_truth=False)
    (products_root / "sneaky").symlink_to(outside, target_is_directory=True)  # leads out of the root
    return Built(root, cache, shapes, run, index, model, products_root, outside)
