"""The request edge: the one ASGI layer every HTTP request passes first.

For every request it

* takes the client's ``X-Request-ID`` (validated) or makes one, returns it on the response and
  keeps it in :data:`serving.core.context.CURRENT` for every log line of the request;
* sets the request's deadline (:data:`serving.core.admission.current_deadline`): the default, or
  ``X-Request-Timeout`` cut to the maximum. It bounds reading the body too: a client that sends
  its body slowly (slowloris) gets 408 and its connection closed, so it cannot hold the server;
* caps the body: a ``Content-Length`` over the limit gets 413 at once, and bodies without one
  are counted as they arrive;
* on the prediction paths, refuses typed-predict bodies declared as something other than JSON
  or compressed (415: a small gzip body can expand to gigabytes, so none is decoded), and
  beyond a budget of body bytes in flight sheds with 503 before reading the body (parsing big
  bodies is event-loop work: when it saturates, the model queues stay short and cannot tell);
  bodies without a ``Content-Length`` count as they arrive, and one that takes the budget
  beyond its limit is shed then (503, connection closed: the body is half read);
* counts the response in the metrics and hands it to the access log (written off the hot path).

POSTs to the exact predict and infer paths of served models (one dict lookup) are answered
here, with the same data-plane calls as the documented routes, which answer identically:
through FastAPI's middleware stack, router and dependency solving a request costs more than
the prediction of a small model, and each extra ASGI layer costs a few percent of throughput.
Everything else goes on to the FastAPI app.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from serving.codecs.oip.headers import infer_headers, response_headers
from serving.codecs.oip.service import InferenceService
from serving.core.admission import (
    Deadline,
    Sweeper,
    current_deadline,
    current_ticket,
    deadline_in,
    sweeper,
)
from serving.core.context import (
    CURRENT,
    REQUEST_ID_RULE,
    RequestInfo,
    new_request_id,
    valid_request_id,
)
from serving.core.dataplane import DataPlane, ServedModel
from serving.core.errors import ErrorDetail, OverloadedError, ServingError
from serving.core.shedding import Shedder, Ticket
from serving.http.disconnect import ClientGoneError, unless_disconnected
from serving.http.exception_handlers import (
    error_response,
    internal_error_response,
    is_v2,
    protocol_error_response,
    v2_error_response,
)
from serving.observe.observability import Observability
from serving.settings import Settings

log = logging.getLogger("servewell")

ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]
H = TypeVar("H")

_JSON = (b"content-type", b"application/json")
_JSON_LIKE = frozenset({b"application/json", b"application/x-www-form-urlencoded"})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def exact_paths(dataplane: DataPlane, prefix: str, operation: str) -> dict[str, ServedModel]:
    """``<prefix>/<name>/versions/<v>/<operation>`` for every served version, and
    ``<prefix>/<name>/<operation>`` for each production one."""
    paths: dict[str, ServedModel] = {}
    for served in dataplane.ready_models():
        name, version = served.key
        paths[f"{prefix}/{name}/versions/{version}/{operation}"] = served
        if dataplane.default_version.get(name) == version:
            paths[f"{prefix}/{name}/{operation}"] = served
    return paths


class PathTable(Generic[H]):
    """Maps each exact path of one operation (``<prefix>/<name>[/versions/<v>]/<operation>``)
    to its served model, plus the object that answers them; refilled when the models change."""

    def __init__(self, prefix: str, operation: str) -> None:
        self.prefix = prefix
        self.operation = operation
        self.handler: H | None = None
        self.paths: dict[str, ServedModel] = {}
        self.endpoint = f"{prefix}/{{name}}/{operation}"
        self.versioned_endpoint = f"{prefix}/{{name}}/versions/{{version}}/{operation}"
        """Metric labels: one per path template, not one per model."""

    def fill(self, dataplane: DataPlane, handler: H) -> None:
        self.paths = exact_paths(dataplane, self.prefix, self.operation)
        self.handler = handler

    def clear(self) -> None:
        self.paths = {}
        self.handler = None

    def owns(self, path: str) -> bool:
        """Whether the path has this operation's shape (served model or not)."""
        return path.startswith(self.prefix + "/") and path.endswith("/" + self.operation)

    def endpoint_of(self, path: str) -> str:
        return self.versioned_endpoint if "/versions/" in path else self.endpoint


def _acceptable(name: bytes, value: bytes) -> bool:
    """Predict bodies are JSON (no header: taken as JSON), never compressed. ``curl -d``
    labels every body form-urlencoded: that label is taken as JSON too, so the plainest call
    works (the body must still parse as JSON)."""
    media = value.split(b";", 1)[0].strip().lower()
    if name == b"content-encoding":
        return media in (b"", b"identity")
    return media in _JSON_LIKE or (media.startswith(b"application/") and media.endswith(b"+json"))


class _Refusal(BaseException):
    """The edge answers the request itself with an error. A BaseException, like
    CancelledError: when raised from inside the app (a body over the limit, read by a route)
    it must pass the app's handlers of unexpected errors, which would answer 500."""

    def __init__(self, response: Response, close: bool = False) -> None:
        self.response = response
        self.close = close


def _refusal(
    path: str,
    status: int,
    kind: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    close: bool = False,
) -> _Refusal:
    """An error in the shape of the path's API (the protocol's shape under ``/v2``)."""
    if is_v2(path):
        return _Refusal(v2_error_response(status, message), close)
    return _Refusal(error_response(status, kind, message, details or []), close)


def _unsupported(path: str, name: bytes, value: bytes) -> _Refusal:
    header = name.decode()
    shown = value[:80].decode("latin-1")
    wanted = "application/json" if header == "content-type" else "identity (no compression)"
    return _refusal(
        path,
        415,
        "unsupported_media_type",
        f"{header} {shown!r} is not accepted; send {wanted}",
        [ErrorDetail(("header", header), f"expected {wanted}")],
    )


def _timeout(path: str, value: bytes) -> float:
    try:
        asked = float(value)
    except ValueError:
        asked = math.nan
    if not (math.isfinite(asked) and asked > 0):
        raise _refusal(
            path,
            400,
            "bad_request",
            "X-Request-Timeout must be a positive number of seconds",
            [ErrorDetail(("header", "x-request-timeout"), "not a positive number")],
        )
    return asked


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_response(
    send: Send, response: Response, stamp: list[tuple[bytes, bytes]], close: bool = False
) -> int:
    headers = [*response.raw_headers, *stamp]
    if close:  # the body may be half read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await _send(send, response.status_code, headers, bytes(response.body))
    return response.status_code


class Edge:
    """See the module docstring. ``__call__`` takes HTTP scopes only, and the app that
    answers what the edge does not."""

    def __init__(self, settings: Settings, observability: Observability) -> None:
        self.predict: PathTable[DataPlane] = PathTable("/models", "predict")
        self.infer: PathTable[InferenceService] = PathTable("/v2/models", "infer")
        self.metrics = observability.metrics
        self.access = observability.access
        self.max_body_bytes = settings.max_body_bytes
        self.default_s = settings.request_timeout_s
        self.max_s = settings.max_request_timeout_s
        self.shedder = Shedder(
            settings.max_inflight_body_bytes, settings.max_queue_rows, settings.retry_after_s
        )
        self.stamp: list[tuple[bytes, bytes]] = []
        """Headers added to every response, after ``X-Request-ID``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGICall) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        served: ServedModel | None = None
        table: PathTable[Any] | None = None
        if method == "POST":
            served = self.predict.paths.get(path)
            if served is not None:
                table = self.predict
            else:
                served = self.infer.paths.get(path)
                if served is not None:
                    table = self.infer
                elif self.predict.owns(path):
                    table = self.predict
                elif self.infer.owns(path):
                    table = self.infer
        given: bytes | None = None
        timeout: bytes | None = None
        length = 0
        refusal: _Refusal | None = None
        checks_media = table is self.predict
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
                refusal = _unsupported(path, name, value)
        if given is not None and valid_request_id(given):
            request_id = given.decode("ascii")
            stamp = [(b"x-request-id", given), *self.stamp]
        else:
            request_id = new_request_id()
            stamp = [(b"x-request-id", request_id.encode("ascii")), *self.stamp]
            if given is not None:
                refusal = _refusal(
                    path, 400, "bad_request", f"the X-Request-ID header must be {REQUEST_ID_RULE}"
                )
        info = RequestInfo(request_id)
        CURRENT.set(info)
        status = 499  # stays so when the client leaves before any response (nginx's code)
        ticket: Ticket | None = None
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight_now += 1
        hot = served is not None and table is not None and table.handler is not None
        try:
            seconds = self.default_s
            if refusal is None and timeout is not None:
                seconds = min(_timeout(path, timeout), self.max_s)
            if refusal is not None:
                raise refusal
            if length > self.max_body_bytes:
                raise self._too_large(path)
            if table is not None:
                ticket = self._admit_body(path, length, served)
            deadline = deadline_in(seconds)
            token = current_deadline.set(deadline)
            try:
                if hot:
                    assert served is not None
                    assert table is not None
                    info.model = served.key[0]
                    info.version = str(served.key[1])
                    assert ticket is not None
                    status = await self._answer(
                        table, served, scope, receive, send, stamp, deadline, ticket
                    )
                else:
                    status = await self._pass(scope, receive, send, stamp, deadline, app, ticket)
            finally:
                current_deadline.reset(token)
        except _Refusal as refused:
            status = await _send_response(send, refused.response, stamp, refused.close)
        except Exception:
            if not hot:
                raise  # the app's response had begun: nothing more can be sent
            log.exception("unexpected error on %s %s", method, path)
            status = await _send_response(send, internal_error_response(path), stamp)
        finally:
            if ticket is not None:
                ticket.release()
            seconds = time.perf_counter() - start
            if metrics is not None:
                metrics.in_flight_now -= 1
                endpoint = table.endpoint_of(path) if hot and table else _endpoint(scope)
                metrics.request_done(info.model, info.version, endpoint, status, seconds)
            if self.access is not None:
                self.access.add(
                    (
                        time.time(),
                        request_id,
                        method,
                        path,
                        status,
                        seconds,
                        info.model,
                        info.version,
                        info.rows,
                    )
                )

    # -- limits -----------------------------------------------------------------------------

    def _too_large(self, path: str) -> _Refusal:
        message = f"the request body exceeds the limit of {self.max_body_bytes} bytes"
        return _refusal(path, 413, "payload_too_large", message, close=True)

    def _admit_body(self, path: str, length: int, served: ServedModel | None) -> Ticket:
        """Admit a prediction request or shed it (503) before its body is read
        (:class:`serving.core.shedding.Shedder`)."""
        try:
            ticket = self.shedder.admit(length, served.batcher if served is not None else None)
        except OverloadedError as shed:
            raise _Refusal(protocol_error_response(shed, path, path)) from None
        current_ticket.set(ticket)
        return ticket

    def _arrived(self, path: str, ticket: Ticket, received: int) -> None:
        """Count body bytes beyond those declared (:meth:`serving.core.shedding.Ticket.arrived`)."""
        try:
            ticket.arrived(received)
        except OverloadedError as shed:
            raise _Refusal(protocol_error_response(shed, path, path), close=True) from None

    def _slow_body(self, path: str, seconds: float) -> _Refusal:
        message = f"the request body did not arrive within the deadline of {seconds:g} s"
        return _refusal(path, 408, "request_timeout", message, close=True)

    # -- the served prediction paths --------------------------------------------------------

    async def _answer(
        self,
        table: PathTable[Any],
        served: ServedModel,
        scope: Scope,
        receive: Receive,
        send: Send,
        stamp: list[tuple[bytes, bytes]],
        deadline: Deadline,
        ticket: Ticket,
    ) -> int:
        path = scope["path"]
        body = await self._read_body(path, receive, deadline, ticket)
        if body is None:
            return 499
        handler = table.handler
        try:
            if isinstance(handler, DataPlane):
                payload = await unless_disconnected(receive, handler.predict_json(served, body))
                headers = [_JSON, (b"content-length", str(len(payload)).encode()), *stamp]
            else:
                assert isinstance(handler, InferenceService)
                work = handler.infer(served, body, infer_headers(scope["headers"]))
                payload, json_length = await unless_disconnected(receive, work)
                headers = [*response_headers(len(payload), json_length), *stamp]
        except ClientGoneError:
            return 499
        except ServingError as exc:
            response = protocol_error_response(exc, path, f"POST {path}")
            return await _send_response(send, response, stamp)
        await _send(send, 200, headers, payload)
        return 200

    async def _read_body(
        self, path: str, receive: Receive, deadline: Deadline, ticket: Ticket
    ) -> bytes | None:
        """The whole body (None when the client left first), bounded by the deadline, the
        size limit and the byte budget."""
        task = asyncio.current_task()
        assert task is not None
        watcher = sweeper()
        watcher.watch(task, deadline.at)
        chunks: list[bytes] = []
        received = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk: bytes = message.get("body", b"")
                received += len(chunk)
                if received > self.max_body_bytes:
                    raise self._too_large(path)
                if received > ticket.length:  # never with a Content-Length
                    self._arrived(path, ticket, received)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if _expired(watcher, task):
                raise self._slow_body(path, deadline.seconds) from None
            raise
        finally:  # on every way out: a watched task left behind would be cancelled later
            watcher.release(task)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- everything else --------------------------------------------------------------------

    async def _pass(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        stamp: list[tuple[bytes, bytes]],
        deadline: Deadline,
        app: ASGICall,
        ticket: Ticket | None,
    ) -> int:
        """Let the app answer, with the id on its response and its body bounded (and counted
        against the byte budget with a ticket)."""
        status = 499
        started = False
        limit = self.max_body_bytes
        received = 0
        task = asyncio.current_task()
        assert task is not None
        watcher = sweeper() if scope["method"] in _WITH_BODY else None
        path = scope["path"]

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(path)
                if ticket is not None and received > ticket.length:
                    self._arrived(path, ticket, received)
                if watcher is not None and not message.get("more_body", False):
                    watcher.release(task)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), *stamp]
            await send(message)

        if watcher is not None:
            watcher.watch(task, deadline.at)
        try:
            await app(scope, bounded_receive, send_with_id)
        except _Refusal:
            if started:
                raise RuntimeError("the app failed after its response began") from None
            raise
        except asyncio.CancelledError:
            if watcher is None or not _expired(watcher, task):
                raise
            if started:
                raise RuntimeError("the request body timed out after the response began") from None
            raise self._slow_body(path, deadline.seconds) from None
        except Exception:
            if started:
                raise
            log.exception("unexpected error on %s %s", scope["method"], path)
            return await _send_response(send, internal_error_response(path), stamp)
        finally:
            if watcher is not None:
                watcher.release(task)
        return status


def _expired(watcher: Sweeper, task: asyncio.Task[Any]) -> bool:
    """Whether the sweeper cancelled the task for its deadline (the cancellation is then the
    edge's to handle, so the task is uncancelled)."""
    if watcher.release(task):
        task.uncancel()
        return True
    return False


def _endpoint(scope: Scope) -> str:
    """A bounded label: the route's path template, a mounted app's prefix (the docs' assets)
    with ``/{path}``, ``unmatched`` for paths nothing knows."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        # A mount adds its prefix to the root path of the scope it hands on (the same dict).
        mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
        return f"{mount}/{{path}}" if mount else "unmatched"
    # Each served model has its own documented predict route: one label for all of them.
    if path.startswith("/models/") and path.endswith("/predict"):
        if "/versions/" in path:
            return "/models/{name}/versions/{version}/predict"
        return "/models/{name}/predict"
    return path
