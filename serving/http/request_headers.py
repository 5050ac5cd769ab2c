"""What the edge reads from a request's headers, in one pass: the request id, the timeout
asked for, the declared body length, and the refusals the headers alone call for (a bad
``X-Request-ID`` or ``X-Request-Timeout``, a predict body that is not JSON or is compressed).
"""

from __future__ import annotations

import math

from starlette.types import Scope

from serving.core.context import REQUEST_ID_RULE, new_request_id, valid_request_id
from serving.core.errors import BadRequestError, ErrorDetail, ServingError, UnsupportedMediaError

_JSON_LIKE = frozenset({b"application/json", b"application/x-www-form-urlencoded"})


def _acceptable(name: bytes, value: bytes) -> bool:
    """Predict bodies are JSON (no header: taken as JSON), never compressed. ``curl -d``
    labels every body form-urlencoded: that label is taken as JSON too, so the plainest call
    works (the body must still parse as JSON)."""
    media = value.split(b";", 1)[0].strip().lower()
    if name == b"content-encoding":
        return media in (b"", b"identity")
    return media in _JSON_LIKE or (media.startswith(b"application/") and media.endswith(b"+json"))


def _unsupported(name: bytes, value: bytes) -> UnsupportedMediaError:
    header = name.decode()
    shown = value[:80].decode("latin-1")
    wanted = "application/json" if header == "content-type" else "identity (no compression)"
    return UnsupportedMediaError(
        f"{header} {shown!r} is not accepted; send {wanted}",
        [ErrorDetail(("header", header), f"expected {wanted}")],
    )


def timeout_s(value: bytes) -> float:
    try:
        asked = float(value)
    except ValueError:
        asked = math.nan
    if not (math.isfinite(asked) and asked > 0):
        raise BadRequestError(
            "X-Request-Timeout must be a positive number of seconds",
            [ErrorDetail(("header", "x-request-timeout"), "not a positive number")],
        )
    return asked


def read_headers(
    scope: Scope, stamped: list[tuple[bytes, bytes]], checks_media: bool
) -> tuple[str, list[tuple[bytes, bytes]], bytes | None, int, ServingError | None]:
    """The request id and the headers stamped on the response, ``X-Request-Timeout``, the
    declared length, and the first refusal the headers call for (if any)."""
    given: bytes | None = None
    timeout: bytes | None = None
    length = 0
    refusal: ServingError | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit():
                length = int(value)
        elif name == b"x-request-id":
            if given is None:
                given = value
        elif name == b"x-request-timeout":
            timeout = value
        elif (
            checks_media
            and (name == b"content-type" or name == b"content-encoding")
            and refusal is None
            and not _acceptable(name, value)
        ):
            refusal = _unsupported(name, value)
    if given is not None and valid_request_id(given):
        return (
            given.decode("ascii"),
            [(b"x-request-id", given), *stamped],
            timeout,
            length,
            refusal,
        )
    request_id = new_request_id()
    stamp = [(b"x-request-id", request_id.encode("ascii")), *stamped]
    if given is not None:
        refusal = BadRequestError(f"the X-Request-ID header must be {REQUEST_ID_RULE}")
    return request_id, stamp, timeout, length, refusal
