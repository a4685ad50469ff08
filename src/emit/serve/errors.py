"""Every error leaves the service as JSON: ``{"error": code, "message": text, ...}``.

Bad requests get a 4xx that says what was wrong and how to fix it. Anything unexpected is
logged with its traceback and answered with a 500 that names only the request id, so the
traceback stays in the server log and never reaches the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from emit.serve.middleware import BodyTooLarge

log = logging.getLogger("emit.serve")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str  # a stable code, e.g. "bad_image", "unknown_tag", "too_many_images"
    message: str  # what was wrong and what to do
    details: list[dict[str, Any]] | None = None
    request_id: str | None = None


class ApiError(Exception):
    """A request the service refuses: HTTP ``status``, a stable ``code`` and a message for people."""

    def __init__(self, status: int, code: str, message: str,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def not_configured(what: str, flag: str) -> ApiError:
    return ApiError(404, "not_configured", f"this server has no {what}; start emit serve with {flag}")


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   request: Request | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=code, message=message, details=details,
                     request_id=getattr(request.state, "request_id", None) if request else None)
    return JSONResponse(jsonable_encoder(body, exclude_none=True), status_code=status, headers=headers)


def _code_of(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                "type": str(err.get("type", ""))}
        out.append(item)
    return out


def _expected_body(request: Request) -> str | None:
    """'json' or 'form': what the matched operation reads from the body; None if it reads none."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not route.dependant.body_params:
        return None
    forms = any(isinstance(f.field_info, params.Form) for f in route.dependant.body_params)  # File too
    return "form" if forms else "json"


def _wrong_content_type(request: Request) -> str | None:
    """A message if the request's Content-Type is not what the operation reads, else None."""
    expected = _expected_body(request)
    given = request.headers.get("content-type")
    media = (given or "").split(";")[0].strip().lower()
    is_json = media == "application/json" or media.endswith("+json")
    if expected == "json" and given is not None and not is_json:
        return (f"this endpoint reads a JSON body, but the request's Content-Type is {given!r}; "
                "send JSON with 'Content-Type: application/json'")
    if expected == "form" and media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return (f"this endpoint reads a multipart/form-data upload, but the request's Content-Type is "
                f"{given or 'missing'!r}; send the files as a form (curl -F images=@photo.jpg ...)")
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            where = next((d["loc"][1] for d in details
                          if d["type"] == "json_invalid" and len(d["loc"]) > 1), None)
            at = f" (at character {where})" if where is not None else ""
            message = f"the request body is not valid JSON{at}; check its quotes, commas and brackets"
            return error_response(400, "malformed_json", message, details, request)
        wrong_type = _wrong_content_type(request) if any(d["loc"][:1] == ["body"] for d in details) else None
        if wrong_type:
            return error_response(415, "unsupported_media_type", wrong_type, details, request)
        text = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in details[:5])
        return error_response(422, "invalid_request", f"the request does not fit the API: {text}",
                              details, request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = "upload_too_large" if isinstance(exc, BodyTooLarge) else _code_of(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or resource: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, request=request,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
        return error_response(500, "internal_error", "the server failed on this request; the server log "
                              f"has the details under request id {request_id}", request=request)
