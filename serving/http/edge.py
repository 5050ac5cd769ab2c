"""The request edge: the ASGI middleware every HTTP request passes first.

For every request it

* takes the client's ``X-Request-ID`` (validated) or makes one, returns it on the response and
  builds the request's :class:`serving.core.context.RequestContext` (also in
  :data:`serving.core.context.CURRENT`, for every log line of the request);
* sets the request's deadline in that context: the default, or ``X-Request-Timeout`` cut to
  the maximum. It bounds reading the body too: a client that sends its body slowly
  (slowloris) gets 408 and its connection closed, so it cannot hold the server;
* caps the body: a ``Content-Length`` over the limit gets 413 at once, and bodies without one
  are counted as they arrive;
* on the prediction paths, refuses typed-predict bodies declared as something other than JSON
  or compressed (415: a small gzip body can expand to gigabytes, so none is decoded), and
  beyond a budget of body bytes in flight sheds with 503 before reading the body (parsing big
  bodies is event-loop work: when it saturates, the model queues stay short and cannot tell);
  bodies without a ``Content-Length`` count as they arrive, and one that takes the budget
  beyond its limit is shed then (503, connection closed: the body is half read);
* counts the response in the metrics and hands it to the access log (written off the hot path).

It answers every predict and infer path itself, served or not (an exact path of a served
version is one dict lookup; other names and versions resolve to the same errors as anywhere),
through the one request path :func:`serving.core.predictor.answer` with the API's codec. No
FastAPI route exists for them: through FastAPI's middleware stack, router and dependency
solving a request costs more than the prediction of a small model. Their operations are
documented from the served models (:mod:`serving.http.app`). Everything else goes on to the
FastAPI app. Refusals are ordinary :class:`serving.core.errors.ServingError`\\ s that the edge
turns into responses, with a ``close`` flag when the body was left half read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.core.admission import Sweeper, deadline_in, sweeper
from serving.core.context import CURRENT, RequestContext
from serving.core.dataplane import ServedModel
from serving.core.errors import BodyTimeoutError, PayloadTooLargeError, ServingError
from serving.core.idle_poll import IdlePoll
from serving.core.predictor import answer
from serving.core.shedding import Shedder, Ticket
from serving.http.disconnect import ClientGoneError, unless_disconnected
from serving.http.exception_handlers import (
    http_error_response,
    internal_error_response,
    protocol_error_response,
)
from serving.http.path_table import PathTable
from serving.http.request_headers import read_headers, timeout_s
from serving.observe.observability import Observability
from serving.settings import Settings

log = logging.getLogger("servewell")

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


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


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the edge was not placed in front of an app (Edge.around)")


class Edge:
    """See the module docstring. :meth:`around` places it in front of the app that answers
    what the edge does not (HTTP only: other scopes go straight to the app)."""

    def __init__(self, settings: Settings, observability: Observability) -> None:
        self.app: ASGIApp = _no_app
        self.predict = PathTable("/models", "predict")
        self.infer = PathTable("/v2/models", "infer")
        self.metrics = observability.metrics
        self.idle = IdlePoll(settings.idle_poll_us * 1e-6)
        """Requests in flight, and the loop kept polling after the last (also gRPC's)."""
        if self.metrics is not None:
            self.metrics.refreshers.append(self._refresh)
        self.access = observability.access
        self.max_body_bytes = settings.max_body_bytes
        self.default_s = settings.request_timeout_s
        self.max_s = settings.max_request_timeout_s
        self.shedder = Shedder(
            settings.max_inflight_body_bytes, settings.max_queue_rows, settings.retry_after_s
        )
        self.stamp: list[tuple[bytes, bytes]] = []
        """Headers added to every response, after ``X-Request-ID``."""

    def around(self, app: ASGIApp) -> Edge:
        """The edge in front of ``app`` (a middleware factory)."""
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        table, served = self._route(method, path)
        request_id, stamp, timeout, length, refusal = read_headers(
            scope, self.stamp, table is self.predict and method == "POST"
        )
        ctx = RequestContext(request_id, started=start)
        CURRENT.set(ctx)
        status = 499  # stays so when the client leaves before any response (nginx's code)
        metrics = self.metrics
        if metrics is not None:
            metrics.in_flight_now += 1
        self.idle.begin(scope.get("client"))
        try:
            try:
                if refusal is not None:
                    raise refusal
                seconds = self.default_s if timeout is None else min(timeout_s(timeout), self.max_s)
                if length > self.max_body_bytes:
                    raise self._too_large()
                if table is not None and method == "POST":
                    ctx.ticket = self.shedder.admit(
                        length, served.batcher if served is not None else None
                    )
                ctx.deadline = deadline_in(seconds)
                if table is None:
                    status = await self._pass(scope, receive, send, stamp, ctx)
                else:
                    status = await self._answer(table, served, scope, receive, send, stamp, ctx)
            except ServingError as refused:
                response = protocol_error_response(refused, path, f"{method} {path}")
                status = await _send_response(send, response, stamp, refused.close)
        finally:
            if ctx.ticket is not None:
                ctx.ticket.release()
            self._record(scope, table, ctx, status, time.perf_counter() - start)
            self.idle.end()

    def _refresh(self) -> None:
        assert self.metrics is not None
        self.metrics.idle_poll.values[()] = self.idle.seconds

    def _record(
        self,
        scope: Scope,
        table: PathTable | None,
        ctx: RequestContext,
        status: int,
        seconds: float,
    ) -> None:
        """Count the response in the metrics; hand it to the access log."""
        metrics = self.metrics
        path = scope["path"]
        if metrics is not None:
            metrics.in_flight_now -= 1
            endpoint = table.endpoint_of(path) if table is not None else _endpoint(scope)
            metrics.request_done(ctx.model, ctx.version, endpoint, status, seconds)
        if self.access is not None:
            self.access.add(
                (
                    time.time(),
                    ctx.request_id,
                    scope["method"],
                    path,
                    status,
                    seconds,
                    ctx.model,
                    ctx.version,
                    ctx.rows,
                )
            )

    def _route(self, method: str, path: str) -> tuple[PathTable | None, ServedModel | None]:
        """The operation a path belongs to (None: the app's), and the served version of an
        exact path (a dict lookup first: the usual case)."""
        if method == "POST":
            served = self.predict.paths.get(path)
            if served is not None:
                return self.predict, served
            served = self.infer.paths.get(path)
            if served is not None:
                return self.infer, served
        if self.predict.parts(path) is not None:
            return self.predict, None
        if self.infer.parts(path) is not None:
            return self.infer, None
        return None, None

    # -- limits -----------------------------------------------------------------------------

    def _too_large(self) -> PayloadTooLargeError:
        message = f"the request body exceeds the limit of {self.max_body_bytes} bytes"
        return PayloadTooLargeError(message, close=True)

    @staticmethod
    def _slow_body(seconds: float) -> BodyTimeoutError:
        message = f"the request body did not arrive within the deadline of {seconds:g} s"
        return BodyTimeoutError(message, close=True)

    # -- the prediction paths ---------------------------------------------------------------

    async def _answer(
        self,
        table: PathTable,
        served: ServedModel | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        stamp: list[tuple[bytes, bytes]],
        ctx: RequestContext,
    ) -> int:
        """Answer a predict or infer path: decode, predict, encode (domain errors raised)."""
        path = scope["path"]
        if scope["method"] != "POST":
            response = http_error_response(path, 405, "Method Not Allowed", {"Allow": "POST"})
            return await _send_response(send, response, stamp)
        if served is None:
            served = table.resolve(path)
        else:
            ctx.model = served.manifest.name
            ctx.version = str(served.manifest.version)
        body = await self._read_body(receive, ctx)
        if body is None:
            return 499
        assert table.codec is not None
        assert table.dataplane is not None
        dataplane = table.dataplane
        # A path naming no version is shared by the model's experiment, if one runs.
        routed = bool(dataplane.registry.routes) and "/versions/" not in path
        work = answer(table.codec, dataplane, served, body, scope["headers"], ctx, routed)
        try:
            payload, headers = await unless_disconnected(receive, work)
        except ClientGoneError:
            return 499
        except ServingError:
            raise
        except Exception:
            log.exception("unexpected error on POST %s", path)
            return await _send_response(send, internal_error_response(path), stamp)
        await _send(send, 200, [*headers, *stamp], payload)
        return 200

    async def _read_body(self, receive: Receive, ctx: RequestContext) -> bytes | None:
        """The whole body (None when the client left first), bounded by the deadline, the
        size limit and the byte budget."""
        task = asyncio.current_task()
        assert task is not None
        assert ctx.deadline is not None
        assert ctx.ticket is not None
        ticket = ctx.ticket
        watcher = sweeper()
        watcher.watch(task, ctx.deadline.at)
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
                    raise self._too_large()
                if received > ticket.length:  # never with a Content-Length
                    _arrived(ticket, received)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if _expired(watcher, task):
                raise self._slow_body(ctx.deadline.seconds) from None
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
        ctx: RequestContext,
    ) -> int:
        """Let the app answer, with the id on its response and its body bounded. A body over
        a limit raises the refusal in the app (which cannot answer it) and is answered here
        once the app is done: the app's own response to it is dropped."""
        status = 499
        started = False
        refused: ServingError | None = None
        limit = self.max_body_bytes
        received = 0
        task = asyncio.current_task()
        assert task is not None
        assert ctx.deadline is not None
        watcher = sweeper() if scope["method"] in _WITH_BODY else None

        async def bounded_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = self._too_large()
                    raise refused
                if watcher is not None and not message.get("more_body", False):
                    watcher.release(task)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if refused is not None:
                return  # the edge answers the refusal
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), *stamp]
            await send(message)

        if watcher is not None:
            watcher.watch(task, ctx.deadline.at)
        try:
            await self.app(scope, bounded_receive, send_with_id)
        except asyncio.CancelledError:
            if watcher is None or not _expired(watcher, task):
                raise
            raise _timeout_after(started, ctx.deadline.seconds) from None
        except Exception as failure:
            response = _failure_response(failure, started, refused, scope)
            return await _send_response(send, response, stamp)
        finally:
            if watcher is not None:
                watcher.release(task)
        if refused is not None:
            raise _refusal_after(started, refused)
        return status


def _refusal_after(started: bool, refused: ServingError) -> Exception:
    """What to raise when the app is done with a refused body: the refusal, for the edge to
    answer, or once the app's response had begun, an error (nothing more can be sent)."""
    return RuntimeError("the app failed after its response began") if started else refused


def _timeout_after(started: bool, seconds: float) -> Exception:
    """What to raise when the deadline cut the app's body short: the 408, for the edge to
    answer, or once the app's response had begun, an error."""
    if started:
        return RuntimeError("the request body timed out after the response began")
    return Edge._slow_body(seconds)


def _failure_response(
    failure: Exception, started: bool, refused: ServingError | None, scope: Scope
) -> Response:
    """The 500 for an app that failed before its response began (out of :meth:`Edge._pass`,
    which runs per request: errors are rare); raises what the edge answers otherwise."""
    if refused is not None:
        raise _refusal_after(started, refused) from None
    if started:
        raise failure
    log.error("unexpected error on %s %s", scope["method"], scope["path"], exc_info=failure)
    return internal_error_response(scope["path"])


def _arrived(ticket: Ticket, received: int) -> None:
    """Count body bytes beyond those declared (:meth:`serving.core.shedding.Ticket.arrived`);
    a request shed then has its body half read."""
    try:
        ticket.arrived(received)
    except ServingError as shed:
        shed.close = True
        raise


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
    if isinstance(path, str):
        return path
    # A mount adds its prefix to the root path of the scope it hands on (the same dict).
    mount = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return f"{mount}/{{path}}" if mount else "unmatched"
