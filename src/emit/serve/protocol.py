"""uvicorn's HTTP protocol, answering a request it cannot parse with emit's JSON error body.

uvicorn refuses a request that is not valid HTTP/1.1 (``Content-Length: abc``, a malformed
header line, a header block over its size limit) itself, before the app is called, with a
plain-text 400. The app never sees such a request, so no middleware can change that answer;
the protocol class can: it keeps uvicorn's parsing and replaces only that one response.
The request never reached the app, so the body has no request id.
"""

from __future__ import annotations

import asyncio
import json

BAD_HTTP_MESSAGE = ("the request is not valid HTTP/1.1 (for example a Content-Length that is not a number, "
                    "or a malformed header line), so the server could not read it; fix the client's request")


def bad_http_response() -> bytes:
    """The whole 400 response: status line, headers and JSON body."""
    body = json.dumps({"error": "bad_request", "message": BAD_HTTP_MESSAGE}).encode()
    head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"x-content-type-options: nosniff\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def json_error_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own HTTP protocol class (httptools if installed, else h11) with a JSON 400."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class JsonErrorProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def send_400_response(self, msg: str) -> None:
            # uvicorn closes the connection after this answer; so do we, with the same bytes on
            # the wire apart from the body and its type
            self.transport.write(bad_http_response())
            self.transport.close()

    return JsonErrorProtocol
