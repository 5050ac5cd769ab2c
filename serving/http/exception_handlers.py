"""The one place that maps errors to HTTP responses, all in one JSON shape::

    {"error": {"type": "validation_error", "message": "...",
               "details": [{"loc": ["instances", 3, "petal_length_cm"], "msg": "..."}]}}

Nothing a client sends yields a 500; unexpected failures give a 500 without a stack trace.

Under ``/v2`` (the Open Inference Protocol) errors have that protocol's shape instead,
``{"error": "message"}``, and a request the protocol rejects is a 400.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.core.context import current_request_id
from serving.core.errors import (
    ArtifactRefusedError,
    BadRequestError,
    BodyTimeoutError,
    CaptureOffError,
    DeadlineExceededError,
    ErrorDetail,
    InferenceError,
    InvalidInputError,
    InvalidModelNameError,
    LifecycleConflictError,
    MalformedRequestError,
    ModelUnavailableError,
    NoExperimentError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RefusedError,
    RetryableError,
    ServingError,
    UnknownModelError,
    UnknownVersionError,
    UnsupportedMediaError,
)

log = logging.getLogger("servewell")

STATUS: dict[type[ServingError], int] = {
    UnknownModelError: 404,
    UnknownVersionError: 404,
    NoExperimentError: 404,
    MalformedRequestError: 400,
    InvalidInputError: 422,
    ModelUnavailableError: 503,
    NotReadyError: 503,
    InferenceError: 500,
    InvalidModelNameError: 400,
    ArtifactRefusedError: 409,
    LifecycleConflictError: 409,
    CaptureOffError: 409,
    RetryableError: 503,
    DeadlineExceededError: 504,
    BadRequestError: 400,
    PayloadTooLargeError: 413,
    BodyTimeoutError: 408,
    UnsupportedMediaError: 415,
}

_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


MAX_DETAILS = 50
"""An error lists at most this many problems (a 10 000-row request of text would otherwise
get a response many times its own size); a last entry says how many were left out."""
_MAX_LOC_CHARS = 80


def _short(part: str | int) -> str | int:
    """Echo what the client sent in ``loc`` (e.g. an unknown key), but never at length."""
    if isinstance(part, str) and len(part) > _MAX_LOC_CHARS:
        return part[:_MAX_LOC_CHARS] + "…"
    return part


def error_body(type_: str, message: str, details: Iterable[ErrorDetail] = ()) -> bytes:
    listed = list(details)
    shown = [{"loc": [_short(p) for p in d.loc], "msg": d.msg} for d in listed[:MAX_DETAILS]]
    if len(listed) > MAX_DETAILS:
        shown.append({"loc": [], "msg": f"... and {len(listed) - MAX_DETAILS} more problems"})
    return orjson.dumps({"error": {"type": type_, "message": message, "details": shown}})


def error_response(
    status: int,
    type_: str,
    message: str,
    details: Iterable[ErrorDetail] = (),
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(type_, message, details), status, headers, media_type="application/json"
    )


def _status_of(exc: ServingError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def is_v2(path: str) -> bool:
    """Whether a path belongs to the Open Inference Protocol endpoints."""
    return path == "/v2" or path.startswith("/v2/")


def v2_error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def v2_error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(v2_error_body(message), status, headers, media_type="application/json")


def _message(exc: ServingError, where: str) -> str:
    """What the client reads. A model's own exception (e.g. ``KeyError: ('iris', 1)``) stays
    in the log, under the request id the client is given to quote."""
    if isinstance(exc, InvalidInputError):
        return exc.message
    if isinstance(exc, InferenceError) and exc.detail is not None:
        request_id = current_request_id() or "unknown"
        log.error("%s: request %s: %s: %s", where, request_id, exc, exc.detail)
        return f"{exc} (request id {request_id}; the cause is in the service log)"
    return str(exc)


def v2_serving_error_response(exc: ServingError, where: str) -> Response:
    """A domain error in the protocol's shape; invalid requests are 400 there."""
    status = 400 if isinstance(exc, InvalidInputError) else _status_of(exc)
    if status >= 500 and not _has_detail(exc):
        log.warning("%s: %s", where, exc)
    message = _message(exc, where)
    if isinstance(exc, InvalidInputError) and exc.details:
        shown = "; ".join(
            f"{'.'.join(map(str, map(_short, d.loc)))}: {d.msg}" for d in exc.details[:5]
        )
        message = f"{message}: {shown}"
    return v2_error_response(status, message)


def serving_error_response(exc: ServingError, where: str) -> Response:
    """The response for a domain error; ``where`` (method and path) is only for the log."""
    status = _status_of(exc)
    _log_failure(status, exc, where)
    details = exc.details if isinstance(exc, InvalidInputError | RefusedError) else ()
    message = _message(exc, where)
    headers = None
    if isinstance(exc, RetryableError):
        # Whole seconds, as HTTP requires; at least 1 so clients do not retry in a tight loop.
        headers = {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
    return error_response(status, exc.type, message, details, headers)


def _has_detail(exc: ServingError) -> bool:
    return isinstance(exc, InferenceError) and exc.detail is not None


def _log_failure(status: int, exc: ServingError, where: str) -> None:
    # Shedding is the service working as designed: under overload it would flood the log.
    # A model's failure is logged with its cause and request id (_message).
    quiet = isinstance(exc, OverloadedError | DeadlineExceededError) or _has_detail(exc)
    if status >= 500 and not quiet:
        log.warning("%s: %s", where, exc)


def protocol_error_response(exc: ServingError, path: str, where: str) -> Response:
    """A domain error in the shape of the path's protocol (the Open Inference Protocol's
    under ``/v2``, the service's own elsewhere)."""
    if is_v2(path):
        return v2_serving_error_response(exc, where)
    return serving_error_response(exc, where)


def internal_error_response(path: str) -> Response:
    """A 500 that says nothing of the cause (it is logged), in the path's protocol's shape."""
    if is_v2(path):
        return v2_error_response(500, "internal server error")
    return error_response(500, "internal_error", "internal server error")


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    path = request.url.path
    return protocol_error_response(exc, path, f"{request.method} {path}")


def _loc(loc: Sequence[Any]) -> tuple[str | int, ...]:
    return tuple(part if isinstance(part, int) else str(part) for part in loc)


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [ErrorDetail(_loc(e["loc"]), str(e["msg"])) for e in exc.errors()]
    if is_v2(request.url.path):
        where = "; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details[:5])
        return v2_error_response(400, f"the request is not valid: {where}")
    return error_response(422, "validation_error", "the request is not valid", details)


def http_error_response(
    path: str, status: int, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An HTTP-level error (no route, wrong method...) in the path's protocol's shape."""
    if is_v2(path):
        return v2_error_response(status, detail, headers)
    return error_response(status, _HTTP_TYPES.get(status, "http_error"), detail, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return http_error_response(request.url.path, exc.status_code, str(exc.detail), headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return internal_error_response(request.url.path)


def install(app: FastAPI) -> None:
    """Register every handler on the app."""
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
