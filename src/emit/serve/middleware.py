"""ASGI middleware: an access log line per request, the optional bearer token, and a cap on the
request body size.

All are plain ASGI (not ``BaseHTTPMiddleware``) so uploads stream through untouched and an
exception still yields a log line with status 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emit.serve.logs import ACCESS_LOGGER

access_log = logging.getLogger(ACCESS_LOGGER)


class AccessLog:
    """Give each request an id (``X-Request-ID``) and log method, path, status and milliseconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                # nosniff: a browser must take every response for its declared type (an uploaded
                # image is never run as a script or a page)
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode()),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            fields = {"event": "request", "method": scope.get("method"), "path": scope.get("path"),
                      "status": status, "ms": round((time.perf_counter() - start) * 1000, 2),
                      "request_id": request_id, "client": client[0] if client else None}
            access_log.log(logging.WARNING if status >= 500 else logging.INFO, "request",
                           extra={"fields": fields})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server accepts "
                              f"({limit / 2**20:.1f} MB); send fewer or smaller images")


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413.

    A declared Content-Length over the limit is refused before the body is read; a body without
    one (chunked) is counted as it streams and refused when it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            declared = _content_length(scope)
        except ValueError as exc:  # uvicorn refuses these itself; another server may pass them on
            await send_json_error(send, scope, 400, "bad_request", str(exc), close=True)
            return
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, BodyTooLarge(self.max_bytes), scope)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from here
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_413(send, exc, scope)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; ValueError if the header is there but not one whole number."""
    values = [value.strip() for key, value in scope.get("headers", []) if key == b"content-length"]
    if not values:
        return None
    if len(set(values)) > 1 or not values[0].isdigit():
        shown = b", ".join(values).decode("latin-1")[:40]
        raise ValueError(f"the Content-Length header {shown!r} is not the body's size in bytes (one whole "
                         "number); let the HTTP client set it")
    return int(values[0])


async def send_json_error(send: Send, scope: Scope, status: int, code: str, message: str, *,
                          headers: Sequence[tuple[bytes, bytes]] = (), close: bool = False) -> None:
    """Answer with emit's JSON error body from middleware, before the app has run."""
    body = {"error": code, "message": message, "request_id": scope.get("state", {}).get("request_id")}
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
            *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


async def _send_413(send: Send, exc: BodyTooLarge, scope: Scope) -> None:
    await send_json_error(send, scope, 413, "upload_too_large", str(exc.detail), close=True)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class BearerAuth:
    """Refuse requests without ``Authorization: Bearer <token>`` with a JSON 401.

    ``public(path)`` says which paths need no token. The tokens are compared as SHA-256
    digests with :func:`hmac.compare_digest`, so the time taken says nothing about the token,
    not even its length.
    """

    def __init__(self, app: ASGIApp, token: str, public: Callable[[str], bool]) -> None:
        self.app = app
        self.digest = _digest(token.encode())
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                given = value
                break
        scheme, _, credentials = given.strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(_digest(credentials.strip()), self.digest):
            await self.app(scope, receive, send)
            return
        if not given:
            why = ("this server needs a token: send the header 'Authorization: Bearer <token>' (the "
                   "token emit serve was started with, --api-token / EMIT_API_TOKEN); on the web pages "
                   "type it in the token field")
            challenge = b'Bearer realm="emit"'
        else:
            why = ("the token is wrong, or not sent as 'Authorization: Bearer <token>'; check it with the "
                   "server's operator")
            challenge = b'Bearer realm="emit", error="invalid_token"'
        await send_json_error(send, scope, 401, "unauthorized", why,
                              headers=[(b"www-authenticate", challenge)])
