"""Configuration of ``emit serve``: flags override environment variables, which override defaults.

Every setting has an environment variable (``EMIT_INDEX``, ``EMIT_PORT``, ...; see
:data:`ENV`), so the service can run from a container or a unit file with no flags.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from emit.data.images import MAX_IMAGE_PIXELS
from emit.problems import EmitError

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond gets a 4xx answer, not work."""

    max_upload_bytes: int = 20 * MB  # a whole request body, files included
    max_images: int = 32  # images in one upload (a product has fewer than ten)
    max_tags: int = 64  # option tags of one product
    max_image_pixels: int = MAX_IMAGE_PIXELS  # the library's cap: a small file can decode to gigabytes
    max_top_k: int = 100  # results of one search
    max_query_chars: int = 500  # length of a text query
    max_products: int = 2000  # products in one review batch (a loaded folder)
    max_batches: int = 32  # review batches kept in memory; the oldest is dropped first

    def validate(self) -> Limits:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise EmitError(f"limit {f.name} must be at least 1, got {getattr(self, f.name)}")
        return self


@dataclass(frozen=True)
class ServeSettings:
    index: Path | None = None  # index folder from `emit index build`
    retrieval_model: Path | None = None  # run folder; default: the one that built the index
    pairing_model: Path | None = None  # model folder from `emit pair train`
    products_root: Path | None = None  # the review page may load product folders under it only
    export_dir: Path = Path("emit-exports")  # where reviewed final_json.json files go
    cache_dir: Path | None = None  # feature cache (default: $EMIT_CACHE_DIR or ~/.cache/emit/features)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    shutdown_timeout: float = 10.0  # seconds in-flight requests get to finish after SIGTERM
    limits: Limits = field(default_factory=Limits)
    api_token: str | None = field(default=None, repr=False)  # bearer token every API call must send
    insecure_no_token: bool = False  # serve a non-loopback host without a token, knowingly
    workers: int = 1  # server processes (uvicorn workers) sharing the port; each loads the index
    device: str = "auto"  # where the models run (emit.devices): auto, cpu, cuda, cuda:N, mps

    def to_json(self) -> str:
        """The settings for worker processes (:func:`from_json`); the token travels with them,
        in the environment of this server's own children only."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "limits"}
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        limits = {f.name: getattr(self.limits, f.name) for f in fields(Limits)}
        return json.dumps({**values, "limits": limits})

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        data = json.loads(text)
        limits = Limits(**data.pop("limits"))
        values = {k: Path(v) if k in _PATHS and v is not None else v for k, v in data.items()}
        return cls(**values, limits=limits)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Defaults, then ``EMIT_*`` variables, then ``overrides`` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for name, var in ENV.items():
            raw = environ.get(var)
            if overrides.get(name) is not None:
                raw = overrides[name]
            if raw is None or raw == "":
                continue
            target = limits if name in _LIMIT_NAMES else values
            target[name] = _parse(name, var, raw)
        if "max_upload_mb" in limits:
            megabytes = limits.pop("max_upload_mb")
            if not (math.isfinite(megabytes) and megabytes > 0):
                raise EmitError("EMIT_MAX_UPLOAD_MB / --max-upload-mb must be a positive number, "
                                f"got {megabytes}")
            limits["max_upload_bytes"] = max(1, int(megabytes * MB))
        values.setdefault("export_dir", cls.export_dir.absolute())  # the default, ./emit-exports
        settings = cls(**values, limits=replace(Limits(), **limits).validate())
        return settings.validate()

    def validate(self) -> ServeSettings:
        if self.index is None and self.pairing_model is None:
            raise EmitError("emit serve needs something to serve: give --index IDX (search) and/or "
                            "--pairing-model MODEL (pairing and review), or set EMIT_INDEX / "
                            "EMIT_PAIRING_MODEL")
        if self.retrieval_model is not None and self.index is None:
            raise EmitError("--retrieval-model only makes sense with --index")
        if self.workers < 1:
            raise EmitError(f"workers must be at least 1, got {self.workers}")
        if self.workers > 1 and self.pairing_model is not None:
            # each worker is a process of its own, and the review page keeps its batches in one
            raise EmitError("--workers > 1 serves search only: the review page keeps its loaded batches in "
                            "one process, so a second worker would not know them; run a separate "
                            "`emit serve --pairing-model MODEL` (one worker) beside it")
        if not 0 < self.port < 65536:
            raise EmitError(f"port must be in 1..65535, got {self.port}")
        if not (math.isfinite(self.shutdown_timeout) and self.shutdown_timeout > 0):
            raise EmitError(f"shutdown timeout must be a number of seconds > 0, got {self.shutdown_timeout}")
        if self.products_root is not None and not self.products_root.is_dir():
            raise EmitError(f"products root {self.products_root} is not a folder; give the folder that "
                            "holds the batches of product folders")
        _check_writable(self.export_dir)
        if self.api_token is not None:
            _check_token(self.api_token)
        elif not is_loopback(self.host) and not self.insecure_no_token:
            raise EmitError(f"--host {self.host} lets other machines reach the service, and without a token "
                            "anyone who reaches the port can search, review and export: give --api-token "
                            "(better: the EMIT_API_TOKEN variable, which ps does not show), or "
                            "--insecure-no-token (EMIT_INSECURE_NO_TOKEN=1) if a firewall or proxy already "
                            "guards the port")
        return self

    @property
    def exposed_without_token(self) -> bool:
        return self.api_token is None and not is_loopback(self.host)


MIN_TOKEN_CHARS = 16
_TOKEN_CHARS = set(string.ascii_letters + string.digits + string.punctuation)
TOKEN_HOWTO = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise EmitError(f"the API token (--api-token / EMIT_API_TOKEN) has {len(token)} characters; give at "
                        f"least {MIN_TOKEN_CHARS}, so it cannot be guessed; {TOKEN_HOWTO}")
    if not set(token) <= _TOKEN_CHARS:
        raise EmitError("the API token (--api-token / EMIT_API_TOKEN) may hold only printable ASCII without "
                        f"spaces (it travels in an HTTP header); {TOKEN_HOWTO}")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


def _check_writable(folder: Path) -> None:
    """Refuse, at start-up, an export folder that could not be created or written to later."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EmitError(f"export folder {folder}: {existing} is not a folder; give --export-dir a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EmitError(f"export folder {folder}: {existing} is not writable by this user; give "
                        "--export-dir (EMIT_EXPORT_DIR) a folder the server can write to")


# setting -> environment variable
ENV: dict[str, str] = {
    "index": "EMIT_INDEX",
    "retrieval_model": "EMIT_RETRIEVAL_MODEL",
    "pairing_model": "EMIT_PAIRING_MODEL",
    "products_root": "EMIT_PRODUCTS_ROOT",
    "export_dir": "EMIT_EXPORT_DIR",
    "cache_dir": "EMIT_CACHE_DIR",
    "host": "EMIT_HOST",
    "port": "EMIT_PORT",
    "log_level": "EMIT_LOG_LEVEL",
    "shutdown_timeout": "EMIT_SHUTDOWN_TIMEOUT",
    "max_upload_mb": "EMIT_MAX_UPLOAD_MB",
    "max_images": "EMIT_MAX_IMAGES",
    "max_tags": "EMIT_MAX_TAGS",
    "max_image_pixels": "EMIT_MAX_IMAGE_PIXELS",
    "max_top_k": "EMIT_MAX_TOP_K",
    "max_query_chars": "EMIT_MAX_QUERY_CHARS",
    "max_products": "EMIT_MAX_PRODUCTS",
    "max_batches": "EMIT_MAX_BATCHES",
    "api_token": "EMIT_API_TOKEN",
    "insecure_no_token": "EMIT_INSECURE_NO_TOKEN",
    "workers": "EMIT_WORKERS",
    "device": "EMIT_DEVICE",
}
_LIMIT_NAMES = {"max_upload_mb", "max_images", "max_tags", "max_image_pixels", "max_top_k", "max_query_chars",
                "max_products", "max_batches"}
_PATHS = {"index", "retrieval_model", "pairing_model", "products_root", "export_dir", "cache_dir"}
_FLOATS = {"shutdown_timeout", "max_upload_mb"}
_SWITCHES = {"insecure_no_token"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _parse(name: str, var: str, raw: Any) -> Any:
    if name in _SWITCHES:
        if isinstance(raw, bool):
            return raw
        if str(raw).strip().lower() in _TRUE + _FALSE:
            return str(raw).strip().lower() in _TRUE
        raise EmitError(f"{var}: {raw!r} is not one of {', '.join(_TRUE + _FALSE)}")
    if name in _PATHS:
        # absolute, so what /info and the review page show does not depend on the server's cwd
        return Path(raw).expanduser().absolute()
    try:
        if name in _FLOATS:
            return float(raw)
        if name in ("port", "workers") or name in _LIMIT_NAMES:
            return int(raw)
    except (TypeError, ValueError) as exc:
        kind = "a number" if name in _FLOATS else "a whole number"
        raise EmitError(f"{var} / --{name.replace('_', '-')}: {raw!r} is not {kind}") from exc
    if name == "log_level":
        level = str(raw).lower()
        if level not in _LOG_LEVELS:
            raise EmitError(f"{var} / --log-level: {raw!r} is not one of {', '.join(_LOG_LEVELS)}")
        return level
    return str(raw)
