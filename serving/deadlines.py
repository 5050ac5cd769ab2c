"""Give every HTTP request its deadline: the default, or what the client asks for with
``X-Request-Timeout: <seconds>`` (cut to the configured maximum). See serving.admission."""

from __future__ import annotations

import math

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.admission import current_deadline, deadline_in
from serving.errors import ErrorDetail
from serving.exception_handlers import error_response

HEADER = b"x-request-timeout"


class RequestDeadlineMiddleware:
    """Set :data:`serving.admission.current_deadline` for the request; a malformed
    ``X-Request-Timeout`` gets 400."""

    def __init__(self, app: ASGIApp, default_s: float, max_s: float) -> None:
        self.app = app
        self.default_s = default_s
        self.max_s = max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = self.default_s
        for name, value in scope["headers"]:
            if name == HEADER:
                try:
                    asked = float(value)
                except ValueError:
                    asked = math.nan
                if not (math.isfinite(asked) and asked > 0):
                    response = error_response(
                        400,
                        "bad_request",
                        "X-Request-Timeout must be a positive number of seconds",
                        [ErrorDetail(("header", "x-request-timeout"), "not a positive number")],
                    )
                    await response(scope, receive, send)
                    return
                seconds = min(asked, self.max_s)
        token = current_deadline.set(deadline_in(seconds))
        try:
            await self.app(scope, receive, send)
        finally:
            current_deadline.reset(token)
