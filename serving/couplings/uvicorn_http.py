"""Coupling ``uvicorn-http``: uvicorn's httptools protocol, with limits on connections and
request heads, writing each response with one system call.

 uvicorn bounds neither how long a client may take to send a
request's headers (its request timeouts start once they are in, its keep-alive timeout only
after a first response), nor how many connections are open, nor how big a head is. So here:

* a head must be complete within ``header_timeout_s`` of the connection's start (or of the
  first byte after a response on a kept-alive connection: any byte cancels uvicorn's
  keep-alive timeout, even a blank line, which begins no request); beyond it the connection is
  closed (408 first if part of a request came). One timer per server process, not per
  request: connections awaiting a head are kept in arrival order, so the oldest is first;
* beyond ``max_connections`` open connections a new one gets a 503 and is closed at once;
* a head over ``max_header_bytes`` or with more than ``max_headers`` header lines gets 431
  and the connection is closed. httptools holds a header's value in memory until the line
  ends, so the bytes of a head still incomplete are counted as they arrive too.

uvicorn's ``limit_concurrency`` is not this: it answers 503 once a request's headers are in,
and counts idle connections without closing any. Idle kept-alive connections stay under
uvicorn's ``timeout_keep_alive``.

**One write per response.** uvicorn writes a response's head and its body with two
``transport.write`` calls, and uvloop sends each at once: two ``send`` system calls, two trips
through the TCP stack and two wake-ups of the client. Here the connection's transport
(:class:`_OneWrite`) holds a final response's head until the next write, which a
fixed-length answer makes in the same step, and sends both in one call. A held head is never
left behind: anything else done with the transport, or the end of the loop iteration (one
callback per iteration for all connections), sends it first. Measured in alternating runs:
iris single rows at c=100 +8 to +31 % req/s (CPU per request -6 to -22 %), c=1 unchanged.

uvicorn's public options offer none of these limits (``h11_max_incomplete_event_size`` bounds
a head only under h11, which is slower), hence the subclass.

**Couplings with uvicorn's private ``HttpToolsProtocol``** (this module is the only one):

1. its constructor's keywords (``config``, ``server_state``, ``app_state``, ``_loop``) and its
   attributes ``loop``, ``transport``, ``parser``, ``url``, ``headers``, ``cycle`` (with
   ``response_complete``) and ``server_state.default_headers``;
2. ``connection_made`` and ``connection_lost`` extended; ``data_received``, ``on_url`` and
   ``on_header`` replaced by uvicorn's own code plus the counting (they run for every chunk
   and header: a call to the parent's would cost a frame each), so they also call its
   ``_unset_keepalive_if_required``, ``send_400_response``, ``_should_upgrade``,
   ``handle_websocket_upgrade`` and ``_unsupported_upgrade_warning``;
3. ``on_message_begin`` and ``on_headers_complete`` extended, ``handle_websocket_upgrade``
   extended (an upgraded connection leaves this protocol without ``connection_lost``);
4. uvicorn writes a response head as one ``bytes`` starting ``HTTP/1.1 `` and its body with a
   later ``write``, and uses no transport methods but ``write``, ``close``, ``is_closing``,
   ``get_extra_info``, ``pause_reading``, ``resume_reading`` and ``set_protocol`` (what
   :class:`_OneWrite` offers);

Tested with the uvicorn versions of :data:`serving.couplings.UVICORN_HTTP` (httptools 0.9.0).
With any other version, or ``SERVEWELL_STOCK_COUPLINGS`` set, :func:`http_protocol` returns
uvicorn's stock protocol and logs a warning once: the service works, without these limits
and with two writes per response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving.couplings import UVICORN_HTTP, enabled

log = logging.getLogger("servewell")

_LINE_EXTRA = 4
"""Bytes of a header line beyond its name and value (``": "`` and CRLF)."""


@dataclass(frozen=True)
class ConnectionLimits:
    """What a connection may do before its request reaches the app (see the module docs)."""

    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int
    retry_after_s: float
    """The ``Retry-After`` of a refused connection."""


_HEAD = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"
_JOIN_LIMIT = 64 * 1024
"""Bodies up to this size are joined to their head (a copy); larger ones go as two buffers
of one ``writelines``."""


class _HeldHeads:
    """The transports of one event loop holding a response head: whatever is still held at the
    end of the loop iteration is written then (one callback per iteration, not per response)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list[_OneWrite] = []

    def hold(self, transport: _OneWrite) -> None:
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(transport)

    def flush(self) -> None:
        held, self.held = self.held, []
        for transport in held:
            transport.flush()


class _OneWrite:
    """The connection's transport, writing a response's head together with its body: uvicorn
    writes them with two calls, and uvloop sends each at once (two trips through the TCP
    stack, a sixth of the event loop's time for single-row answers). A final response's head
    is held until the next write, or anything else done with the transport, or the end of the
    loop iteration; the rest is the transport's own."""

    __slots__ = (
        "_heads",
        "_held",
        "_transport",
        "get_extra_info",
        "is_closing",
        "pause_reading",
        "resume_reading",
    )

    def __init__(self, transport: asyncio.Transport, heads: _HeldHeads) -> None:
        self._transport = transport
        self._heads = heads
        self._held: bytes | None = None
        self.get_extra_info = transport.get_extra_info
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(held + data)
            else:
                self._transport.writelines((held, data))
        elif data[:9] == _HEAD and data[:10] != _INTERIM:
            self._held = data
            self._heads.hold(self)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            # Closed underneath since (a lost connection, an error of another write): nothing
            # can go out, and writing would raise in the loop's callback.
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)


class _HeadRefusedError(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""


def _error(status: bytes, kind: str, message: str, extra: bytes = b"") -> tuple[bytes, bytes]:
    """The status line plus headers, and the JSON body, of an answer before any request
    reached the app (the service's error shape)."""
    # Imported here: it imports FastAPI, which ``python -m serving``'s supervising process
    # never needs; the server processes have imported it with the app.
    from serving.http.exception_handlers import error_body

    body = error_body(kind, message)
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n" + extra
    )
    return head, body


class _Connections:
    """The open connections of one server, and those awaiting a request head, oldest first
    (insertion order: every entry is stamped with the loop's time when inserted)."""

    __slots__ = ("awaiting", "heads", "limits", "loop", "open", "timer")

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self.heads = _HeldHeads(loop)
        self.open: set[GuardedHttpToolsProtocol] = set()
        self.awaiting: dict[GuardedHttpToolsProtocol, float] = {}
        self.timer: asyncio.TimerHandle | None = None

    def await_head(self, connection: GuardedHttpToolsProtocol) -> None:
        awaiting = self.awaiting
        if connection not in awaiting:
            now = self.loop.time()
            awaiting[connection] = now
            if self.timer is None:
                self.timer = self.loop.call_at(now + self.limits.header_timeout_s, self.sweep)

    def sweep(self) -> None:
        """Close the connections whose head is late; wake again for the next one due."""
        timeout = self.limits.header_timeout_s
        cutoff = self.loop.time() - timeout + 0.005  # timers may fire a little early
        awaiting = self.awaiting
        late = []
        for connection, since in awaiting.items():
            if since > cutoff:
                break
            late.append(connection)
        for connection in late:
            del awaiting[connection]
            connection.head_timed_out()  # may come back in, last (self.timer is still set)
        if awaiting:
            first = next(iter(awaiting.values()))
            self.timer = self.loop.call_at(first + timeout, self.sweep)
        else:
            self.timer = None


_SERVERS: weakref.WeakKeyDictionary[ServerState, _Connections] = weakref.WeakKeyDictionary()
"""The connections of each running server (one per uvicorn ``Server``)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol with the limits on connections and heads (see the
    module docs). Built by :func:`http_protocol`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        connections = _SERVERS.get(server_state)
        if connections is None:
            connections = _SERVERS[server_state] = _Connections(limits, self.loop)
        self._connections = connections
        self._limits = limits
        self._refused = False
        self._head_open = False
        """Part of a request head has arrived, not all of it."""
        self._head_bytes = 0
        """Bytes of the head's URL and complete header lines."""
        self._head_chunks = 0
        """Bytes of the chunks that arrived while the head was open and left it open."""
        self._header_count = 0

    # -- connections ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        connections = self._connections
        if len(connections.open) >= self._limits.max_connections:
            self._refused = True
            self._answer_and_close(transport, *self._busy())
            return
        connections.open.add(self)
        connections.await_head(self)
        super().connection_made(_OneWrite(transport, connections.heads))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        connections = self._connections
        connections.open.discard(self)
        connections.awaiting.pop(self, None)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        connections = self._connections
        connections.open.discard(self)
        connections.awaiting.pop(self, None)
        super().handle_websocket_upgrade()

    def head_timed_out(self) -> None:
        """The head did not arrive in time (called by :class:`_Connections`)."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request waits for the one before, unread: not its fault.
            self._connections.await_head(self)
            return
        if self._head_open:
            seconds = f"{self._limits.header_timeout_s:g}"
            head, body = _error(
                b"408 Request Timeout",
                "request_timeout",
                f"the request headers did not arrive within {seconds} s",
            )
            self._answer_and_close(self.transport, head, body)
        else:  # nothing asked: nothing to answer
            self.transport.close()

    # -- heads ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # uvicorn's, plus the limits on heads.
        head_was_open = self._head_open
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadRefusedError):
                self._refuse_head(str(exc.__context__))
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_open:
            if head_was_open:  # all of this chunk is head
                self._head_chunks += len(data)
                if self._head_chunks > self._limits.max_header_bytes:
                    self._refuse_head(self._too_big())
        elif self.cycle is None or self.cycle.response_complete:
            # Bytes that begin no request (llhttp skips blank lines between requests) have
            # cancelled uvicorn's keep-alive timer: the head's clock runs instead.
            self._connections.await_head(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = self._head_chunks = self._header_count = 0
        self._connections.await_head(self)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise _HeadRefusedError(self._too_big())

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))
        self._head_bytes += len(name) + len(value) + _LINE_EXTRA
        self._header_count += 1
        limits = self._limits
        if self._head_bytes > limits.max_header_bytes:
            raise _HeadRefusedError(self._too_big())
        if self._header_count > limits.max_headers:
            message = f"a request may carry at most {limits.max_headers} header lines"
            raise _HeadRefusedError(message)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._connections.awaiting.pop(self, None)
        super().on_headers_complete()

    # -- answers without the app ------------------------------------------------------------

    def _too_big(self) -> str:
        return f"the request line and headers exceed {self._limits.max_header_bytes} bytes"

    def _refuse_head(self, message: str) -> None:
        self._head_open = False
        self._connections.awaiting.pop(self, None)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Trailers, or a pipelined request behind one being answered: no room for a 431.
            self.transport.close()
            return
        head, body = _error(b"431 Request Header Fields Too Large", "headers_too_large", message)
        self._answer_and_close(self.transport, head, body)

    def _busy(self) -> tuple[bytes, bytes]:
        retry = str(math.ceil(self._limits.retry_after_s)).encode()
        message = "the server has too many open connections; retry later"
        return _error(
            b"503 Service Unavailable", "overloaded", message, b"retry-after: " + retry + b"\r\n"
        )

    def _answer_and_close(self, transport: Any, head: bytes, body: bytes) -> None:
        extra = b"".join(
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        )
        transport.write(head + extra + b"\r\n" + body)
        transport.close()


def http_protocol(limits: ConnectionLimits, stock: bool | None = None) -> Any:
    """uvicorn's ``http=``: :class:`GuardedHttpToolsProtocol` with ``limits`` when the
    coupling is on (see :func:`serving.couplings.enabled`), else uvicorn's stock protocol."""
    if enabled(UVICORN_HTTP, stock):
        return functools.partial(GuardedHttpToolsProtocol, limits=limits)
    return HttpToolsProtocol
