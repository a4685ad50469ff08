"""ASGI middleware: an access log line per request, and a cap on the request body size.

Both are plain ASGI (not ``BaseHTTPMiddleware``) so uploads stream through untouched and an
exception still yields a log line with status 500.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

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
        declared = _content_length(scope)
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
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, exc: BodyTooLarge, scope: Scope) -> None:
    body = {"error": "upload_too_large", "message": exc.detail,
            "request_id": scope.get("state", {}).get("request_id")}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
