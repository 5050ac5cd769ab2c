"""Give every HTTP request its deadline: the default, or what the client asks for with
``X-Request-Timeout: <seconds>`` (cut to the configured maximum). See serving.admission.

The deadline bounds reading the body too: a client that sends its body slowly (slowloris)
gets 408 and its connection closed when the deadline passes, so it cannot hold the server.
Predict requests with a body that is declared as something other than JSON, or compressed,
get 415 before anything reads it; and beyond a budget of body bytes in flight, 503 (shed
before the body is read or parsed).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.admission import current_deadline, deadline_in
from serving.errors import ErrorDetail, OverloadedError
from serving.exception_handlers import error_body, error_response, serving_error_response
from serving.middleware import send_json_and_close

HEADER = b"x-request-timeout"
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


_BODY_HEADERS = frozenset({b"content-type", b"content-encoding"})


def _is_predict(path: str) -> bool:
    return path.startswith("/models/") and path.endswith("/predict")


def _acceptable(name: bytes, value: bytes) -> bool:
    """Predict bodies are JSON (no header: taken as JSON), never compressed (a small gzip
    body can expand to gigabytes: none is decoded, so none is accepted). ``curl -d`` labels
    every body form-urlencoded: that label is taken as JSON too, so the plainest call works
    (the body must still parse as JSON)."""
    media = value.split(b";", 1)[0].strip().lower()
    if name == b"content-encoding":
        return media in (b"", b"identity")
    return media in _JSON_LIKE or (media.startswith(b"application/") and media.endswith(b"+json"))


_JSON_LIKE = frozenset({b"application/json", b"application/x-www-form-urlencoded"})


def _unsupported(name: bytes, value: bytes) -> Response:
    header = name.decode()
    shown = value[:80].decode("latin-1")
    wanted = "application/json" if header == "content-type" else "identity (no compression)"
    return error_response(
        415,
        "unsupported_media_type",
        f"{header} {shown!r} is not accepted; send {wanted}",
        [ErrorDetail(("header", header), f"expected {wanted}")],
    )


class RequestDeadlineMiddleware:
    """Set :data:`serving.admission.current_deadline` for the request and bound its body
    read; a malformed ``X-Request-Timeout`` gets 400."""

    def __init__(
        self,
        app: ASGIApp,
        default_s: float,
        max_s: float,
        max_inflight_bytes: int | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        self.app = app
        self.default_s = default_s
        self.max_s = max_s
        self.max_inflight_bytes = max_inflight_bytes
        self.retry_after_s = retry_after_s
        self.inflight_bytes = 0
        """Declared body bytes of the predict requests being handled now."""
        self._reading: set[_Reading] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seconds = self.default_s
        predict = scope["method"] == "POST" and _is_predict(scope["path"])
        length = 0
        for name, value in scope["headers"]:
            if predict and name in _BODY_HEADERS and not _acceptable(name, value):
                await _unsupported(name, value)(scope, receive, send)
                return
            if name == b"content-length" and value.isdigit():
                length = int(value)
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
        if predict and self._over_budget(length):
            shed = OverloadedError("the service is at capacity; retry later", self.retry_after_s)
            await serving_error_response(shed, "POST predict")(scope, receive, send)
            return
        if predict:
            self.inflight_bytes += length
        token = current_deadline.set(deadline_in(seconds))
        try:
            if scope["method"] in _WITH_BODY:
                await self._bounded_body(scope, receive, send, seconds)
            else:
                await self.app(scope, receive, send)
        finally:
            current_deadline.reset(token)
            if predict:
                self.inflight_bytes -= length

    def _over_budget(self, length: int) -> bool:
        """Shed before reading or parsing the body: when the event loop is what saturates
        (parsing big bodies), the model queues stay short and cannot tell. One request alone
        is always admitted."""
        budget = self.max_inflight_bytes
        return (
            budget is not None and self.inflight_bytes > 0 and self.inflight_bytes + length > budget
        )

    async def _bounded_body(
        self, scope: Scope, receive: Receive, send: Send, seconds: float
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        reading = _Reading(task, asyncio.get_running_loop().time() + seconds)

        async def timed_receive() -> Message:
            message = await receive()
            if not (message["type"] == "http.request" and message.get("more_body", False)):
                self._reading.discard(reading)
            return message

        self._reading.add(reading)
        self._arm_sweeper()
        try:
            await self.app(scope, timed_receive, send)
        except asyncio.CancelledError:
            if not reading.expired:
                raise
            task.uncancel()
            await _send_408(send, seconds)
        finally:
            self._reading.discard(reading)

    def _arm_sweeper(self) -> None:
        # One periodic check for every request still reading its body, rather than a timer
        # per request: timers measurably cost throughput on the hot path.
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for reading in [r for r in self._reading if r.deadline <= now]:
            self._reading.discard(reading)
            reading.expired = True
            reading.task.cancel()
        if self._reading:
            self._arm_sweeper()


_SWEEP_S = 0.1


class _Reading:
    """A request whose body is still arriving."""

    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


async def _send_408(send: Send, seconds: float) -> None:
    body = error_body(
        "request_timeout", f"the request body did not arrive within the deadline of {seconds:g} s"
    )
    await send_json_and_close(send, 408, body)
