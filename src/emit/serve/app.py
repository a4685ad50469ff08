"""The ``emit serve`` application: the API routers, the two web pages, health and identity.

:func:`create_app` loads the search index and the pairing model once, before the first
request; :func:`run` serves the app with uvicorn, which on SIGTERM or Ctrl-C stops taking new
connections and lets requests in flight finish (up to ``shutdown_timeout`` seconds).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import fastapi
import starlette
import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from emit import __version__
from emit.config import versions
from emit.serve.errors import ApiError, install_error_handlers
from emit.serve.logs import setup_logging
from emit.serve.middleware import AccessLog, BearerAuth, BodyLimit
from emit.serve.pair_api import pair_router
from emit.serve.protocol import json_error_protocol
from emit.serve.review import review_router
from emit.serve.search_api import search_router
from emit.serve.services import Services, load_services
from emit.serve.settings import ServeSettings

log = logging.getLogger("emit.serve")

STATIC = Path(__file__).parent / "static"
DESCRIPTION = """Search an image index with text or an image, tag a product's images with its option tags,
and review and export those tags. Pages: [search](/) and [pairing review](/review).
Every error is JSON: `{"error": code, "message": text}`."""

# What needs no token when emit serve has one: the health check, and what ships in the package
# (the pages, their scripts and font, the API's description). None of it holds data or paths.
PUBLIC_PATHS = frozenset({"/health", "/", "/review", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                          "/fonts/cjk.otf"})
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI whose /docs page loads Swagger UI from the app itself; never from a CDN."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        log.warning("fastapi-offline is not installed, so there is no /docs page (plain FastAPI would "
                    "load it from a CDN); the schema is at /openapi.json; pip install 'emit[serve]'")
        return FastAPI(**kwargs, docs_url=None)
    return FastAPIOffline(**kwargs)


def create_app(settings: ServeSettings, services: Services | None = None) -> FastAPI:
    """The app, with the settings' index and pairing model loaded (or ``services`` given)."""
    if services is None:
        services = load_services(settings.index, settings.retrieval_model, settings.pairing_model,
                                 settings.cache_dir, settings.device)
    workdir = Path(tempfile.mkdtemp(prefix="emit-serve-"))  # uploads in flight and uploaded batches

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("ready", extra={"fields": {"search": services.search is not None,
                                            "pairing": services.pairing is not None}})
        try:
            yield
        finally:
            # uvicorn has let requests in flight finish (or, past the shutdown timeout, cancelled
            # them and logged so)
            log.info("shut down; temporary uploads removed")
            shutil.rmtree(workdir, ignore_errors=True)

    limits = settings.limits
    app = _fastapi(title="emit", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                   redoc_url=None)
    app.state.services = services
    app.state.workdir = workdir
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    if settings.api_token is not None:  # outside BodyLimit: a request without the token reads nothing
        app.add_middleware(BearerAuth, token=settings.api_token, public=is_public)
        _document_bearer(app)
    app.add_middleware(AccessLog)  # added last: outermost, so it times and logs everything

    app.include_router(search_router(services.search, limits, workdir))
    app.include_router(pair_router(services.pairing, limits, workdir))
    app.include_router(review_router(services.pairing, limits, workdir, settings.products_root,
                                     settings.export_dir))

    @app.get("/health", tags=["service"], summary="Is the service up, and what does it serve")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "search": services.search is not None,
                "pairing": services.pairing is not None}

    @app.get("/info", tags=["service"], summary="Identity and versions of the loaded index and models")
    def info() -> dict[str, Any]:
        return {"emit": __version__,
                "versions": {**versions(), "fastapi": fastapi.__version__, "starlette": starlette.__version__,
                             "uvicorn": uvicorn.__version__},
                "search": services.search.info if services.search else None,
                "pairing": services.pairing.info if services.pairing else None,
                "review": {"products_root": str(settings.products_root) if settings.products_root else None,
                           "export_dir": str(settings.export_dir)},
                "limits": asdict(limits)}

    @app.get("/", include_in_schema=False)
    def search_page() -> FileResponse:
        return FileResponse(STATIC / "search.html")

    @app.get("/review", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html")

    @app.get("/fonts/cjk.otf", include_in_schema=False)
    def cjk_font() -> FileResponse:
        # Chinese tags must not show as boxes on machines without CJK fonts; the font already
        # ships as a dependency for report plots.
        path = packaged_cjk_font()
        if path is None:
            raise ApiError(404, "no_font", "the CJK font package cvttf-notosanscjk-regular is missing")
        return FileResponse(path, media_type="font/otf", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _document_bearer(app: FastAPI) -> None:
    """Declare the token in the OpenAPI schema, so /docs has an Authorize button and clients
    (and the fuzz test) know which operations need it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer",
            "description": "the token emit serve was started with (--api-token / EMIT_API_TOKEN)"}
        error_body = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
        unauthorized = {"description": "no token, or a wrong one",
                        "content": {"application/json": error_body}}
        for path, operations in schema.get("paths", {}).items():
            if is_public(path):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {})["401"] = unauthorized
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def packaged_cjk_font() -> Path | None:
    try:
        import cvttf_NotoSansCJK_Regular as packaged
    except ImportError:
        return None
    path = Path(packaged.__file__).with_name("NotoSansCJKtc-Regular.otf")
    return path if path.is_file() else None


# The settings of `emit serve --workers N`, for the worker processes uvicorn starts (spawned:
# they import the app by name, so they get the settings from their environment).
WORKER_SETTINGS_ENV = "EMIT_SERVE_SETTINGS_JSON"
# uvicorn's own protocol with emit's JSON 400 (see emit.serve.protocol), by import string, so
# that worker processes can import it
JsonErrorHTTP = json_error_protocol()


def worker_app() -> FastAPI:
    """The app of one worker process of ``emit serve --workers N`` (an import-string factory)."""
    import os

    settings = ServeSettings.from_json(os.environ[WORKER_SETTINGS_ENV])
    setup_logging(settings.log_level)
    share = max(1, (os.cpu_count() or 1) // settings.workers)  # the cores, split between workers
    import faiss
    import torch

    torch.set_num_threads(share)
    faiss.omp_set_num_threads(share)
    return create_app(settings)


def run(settings: ServeSettings) -> int:
    """Load, then serve until SIGTERM / SIGINT; returns the exit code."""
    setup_logging(settings.log_level)
    if settings.exposed_without_token:
        log.warning("serving %s without a token (--insecure-no-token): anyone who can reach the port can "
                    "search, review and export", settings.host)
    if settings.workers > 1:
        return _run_workers(settings)
    app = create_app(settings)
    # http=: uvicorn's own protocol, but a request it cannot parse gets emit's JSON error body
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout, log_level=settings.log_level,
                            http=json_error_protocol())
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1  # not started: the port was taken, say (uvicorn logged it)


def _run_workers(settings: ServeSettings) -> int:
    """uvicorn's process manager: ``workers`` processes accept on one socket, each with its own
    copy of the app. An index built with --from-features is memory-mapped read-only by each, so
    its pages are shared; SIGTERM stops them all gracefully."""
    import os

    os.environ[WORKER_SETTINGS_ENV] = settings.to_json()
    log.info("starting workers", extra={"fields": {"workers": settings.workers}})
    uvicorn.run("emit.serve.app:worker_app", factory=True, workers=settings.workers, host=settings.host,
                port=settings.port, log_config=None, access_log=False, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.shutdown_timeout, http="emit.serve.app:JsonErrorHTTP")
    return 0
