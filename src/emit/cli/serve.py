"""``emit serve``: argument parsing only; the service is :mod:`emit.serve`.

Every flag can also be given as an environment variable (``EMIT_INDEX``, ``EMIT_PORT``, ...);
a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import importlib.util

from emit.cli.options import CACHE_DIR_DEFAULT, add_command
from emit.problems import EmitError

SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart",
                 "fastapi_offline": "fastapi-offline"}  # /docs without a CDN

# flag -> help; every value is parsed (and checked) by ServeSettings.from_env
_FLAGS: dict[str, str] = {
    "index": "index folder from `emit index build`, for search (EMIT_INDEX)",
    "retrieval_model": "retrieval run folder (EMIT_RETRIEVAL_MODEL; default: the one that built the index)",
    "pairing_model": "model folder from `emit pair train`, for pairing and review (EMIT_PAIRING_MODEL)",
    "products_root": "folder of product batches the review page may load; nothing outside it is read "
                     "(EMIT_PRODUCTS_ROOT)",
    "export_dir": "where reviewed final_json.json files go (EMIT_EXPORT_DIR; default: ./emit-exports)",
    "cache_dir": f"feature cache (EMIT_CACHE_DIR; default: {CACHE_DIR_DEFAULT})",
    "host": "address to listen on (EMIT_HOST; default: 127.0.0.1, this machine only); any other address "
            "needs --api-token, or --insecure-no-token",
    "port": "port (EMIT_PORT; default: 8000)",
    "log_level": "critical, error, warning, info or debug (EMIT_LOG_LEVEL; default: info)",
    "shutdown_timeout": "seconds requests in flight get to finish on SIGTERM (EMIT_SHUTDOWN_TIMEOUT; "
                        "default: 10)",
    "workers": "server processes sharing the port (EMIT_WORKERS; default: 1); each opens the index, "
               "memory-mapped and read-only when it was built with --from-features, so they share its pages",
    "device": "where the models run: auto (CUDA if present, then MPS, else CPU), cpu, cuda, cuda:N or mps "
              "(EMIT_DEVICE; default: auto)",
    "max_upload_mb": "largest request body in MB (EMIT_MAX_UPLOAD_MB; default: 20)",
    "max_images": "most images in one upload (EMIT_MAX_IMAGES; default: 32)",
    "max_top_k": "most results of one search (EMIT_MAX_TOP_K; default: 100)",
    "api_token": "a token every API call must send as 'Authorization: Bearer TOKEN' (all but /health and "
                 "the static pages); prefer the variable EMIT_API_TOKEN, which other users cannot see in ps",
}
# on/off flags: given means on; the variable takes 1/0, true/false, yes/no
_SWITCHES: dict[str, str] = {
    "insecure_no_token": "serve a non-loopback --host without a token, e.g. behind a proxy that checks "
                         "access itself (EMIT_INSECURE_NO_TOKEN=1)",
}


def missing_modules() -> list[str]:
    return [package for module, package in SERVE_MODULES.items() if importlib.util.find_spec(module) is None]


def cmd_serve(args: argparse.Namespace) -> int:
    missing = missing_modules()
    if missing:
        raise EmitError(f"emit serve needs {', '.join(missing)}: pip install 'emit[serve]'")
    from emit.serve.app import run
    from emit.serve.settings import ServeSettings

    if args.threads is None:
        # one request's work is small: one thread per request is faster than two pools (torch's
        # and FAISS's) spinning on the same cores (measured: docs/retrieval.md, "Interactive text
        # queries"), and concurrent requests use the other cores; FAISS follows torch's count
        import torch

        torch.set_num_threads(1)
    flags = {name: getattr(args, name) for name in (*_FLAGS, *_SWITCHES)}
    if args.verbose and flags["log_level"] is None:
        flags["log_level"] = "debug"
    return run(ServeSettings.from_env(**flags))


def _serve(s: argparse.ArgumentParser) -> None:
    for name, help_text in _FLAGS.items():
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=help_text)
    for name, help_text in _SWITCHES.items():
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_const", const="1",
                       default=None, help=help_text)
    s.set_defaults(func=cmd_serve)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``emit serve`` to the ``emit`` parser."""
    add_command(sub, "serve", _serve, parents=[common],
                help="HTTP service and web pages: search an index, tag and review products",
                description="Serve search (--index), and pairing with its review page "
                            "(--pairing-model), over HTTP, with the OpenAPI schema at /docs. Flags "
                            "override EMIT_* environment variables.")
