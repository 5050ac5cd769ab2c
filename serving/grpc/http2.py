"""gRPC's transport, HTTP/2 over cleartext (prior knowledge), as an asyncio protocol on the
service's own event loop: frames, flow control both ways, pings, resets and graceful GOAWAY,
request headers through the ``hpack`` package, responses written with literal header fields (no
compression state to keep). It knows methods only as paths and messages only as bytes: the
service (:mod:`serving.grpc.server`) registers a unary handler (message in, message out) or a
streaming one (messages in, messages out) per path.

Why not grpcio's server: on this service's single-row traffic it spent about 250 µs of CPU per
call in its own machinery, a bare echo included, three times what a whole typed HTTP request
costs here; this protocol spends about 25 µs (docs/design.md, "gRPC").
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from hpack.exceptions import HPACKError

from serving.core.idle_poll import IdlePoll
from serving.grpc.calls import Call, GrpcError, Method, Status
from serving.grpc.headers import COMPRESSED, Head, HeaderDecoder

log = logging.getLogger("servewell.grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">HBBBI")  # length (24 bits, split), type, flags, stream id
_PREFIX = struct.Struct(">BI")  # a gRPC message: compressed flag, length
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = (
    0x0,
    0x1,
    0x3,
    0x7,
    0x8,
    0x9,
)
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW, DEFAULT_FRAME = 65_535, 16_384
MAX_STREAMS = 1_000
"""Concurrent calls per connection (SETTINGS_MAX_CONCURRENT_STREAMS)."""


_NONE = Method()


class _Stream:
    __slots__ = (
        "body",
        "call",
        "id",
        "method",
        "pending",
        "queue",
        "sent",
        "status",
        "task",
        "window",
    )

    def __init__(self, sid: int, call: Call, window: int) -> None:
        self.id, self.call, self.method = sid, call, _NONE
        self.body = bytearray()
        self.queue: asyncio.Queue[bytes | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.window = window  # what the client lets this stream send it
        self.pending: deque[memoryview] = deque()  # DATA payload waiting for a window
        self.status: bytes | None = None  # the trailers, sent once nothing is pending
        self.sent = False  # response headers written


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK's prefixed integer (RFC 7541, 5.1)."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out, value = [first | top], value - top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes([*out, value])


def literal(name: bytes, value: bytes) -> bytes:
    """A header field without indexing, plain strings: no table state on either side."""
    if len(name) < 127 and len(value) < 127:  # nearly all: lengths fit their first byte
        return b"\x00%c%s%c%s" % (len(name), name, len(value), value)
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


_RESPONSE = b"\x88" + b"\x0f\x10" + _integer(16, 7, 0) + b"application/grpc"  # :status 200
_OK = literal(b"grpc-status", b"0")


def _percent(message: str) -> bytes:
    """``grpc-message`` encoding: UTF-8, percent-escaped outside printable ASCII and ``%``."""
    raw = message.encode()
    return b"".join(bytes([c]) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in raw)


def status_block(code: Status, message: str, trailers: list[tuple[str, str]]) -> bytes:
    block = _OK if code is Status.OK else literal(b"grpc-status", b"%d" % code)
    if message:  # within one frame with room to spare
        block += literal(b"grpc-message", _percent(message[:4000]))
    return block + b"".join(literal(k.encode(), v.encode()) for k, v in trailers)


def frame(kind: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Http2Server) -> None:
        self.server = server
        self.methods = server.methods
        self.max_message = server.max_message
        self.buffer = bytearray()
        self.started = False
        self.decoder = HeaderDecoder(server.max_header_bytes)
        self.streams: dict[int, _Stream] = {}
        self.blocked: set[_Stream] = set()  # with data waiting for a window
        self.peer_window = DEFAULT_WINDOW  # initial window of each stream the client set
        self.peer_frame = DEFAULT_FRAME
        self.send_window = DEFAULT_WINDOW  # the connection's, towards the client
        self.received = 0  # bytes since the last connection WINDOW_UPDATE
        self.last_id = 0
        self.headers: tuple[int, int, bytearray] | None = None  # a block awaiting CONTINUATION
        self.going_away = False
        self.out: list[bytes] = []
        self.flushing = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # -- transport -----------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)
        server = self.server
        limits = (0x3, MAX_STREAMS, 0x4, server.stream_window, 0x6, server.max_header_bytes)
        settings = struct.pack(">HIHIHI", *limits)
        raise_window = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, raise_window))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        """Queued; written once per loop iteration, so answers finished together share a send."""
        self.out.append(data)
        if not self.flushing:
            self.flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flushing = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with ``code``, then close."""
        log.info("gRPC connection closed: %s", why)
        self.flush()
        if self.transport is not None:
            goaway = struct.pack(">II", self.last_id, code) + why.encode()[:200]
            self.transport.write(frame(GOAWAY, 0, 0, goaway))
            self.transport.close()

    def goaway(self) -> None:
        """No new calls on this connection; the ones in flight go on (graceful shutdown)."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_id, NO_ERROR)))
            if not self.streams:
                self.flush()
                self.transport.close()

    # -- reading -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        if not self.started:
            if len(buffer) < len(PREFACE):
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self.fail(PROTOCOL_ERROR, "not an HTTP/2 client (gRPC needs HTTP/2)")
                return
            self.started, at = True, len(PREFACE)
        end = len(buffer)
        try:
            while end - at >= 9:
                high, low, kind, flags, sid = _FRAME.unpack_from(buffer, at)
                length = (high << 8) | low
                if length > DEFAULT_FRAME:  # we never raised SETTINGS_MAX_FRAME_SIZE
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "frame larger than allowed")
                if end - at - 9 < length:
                    break
                payload = bytes(buffer[at + 9 : at + 9 + length])
                at += 9 + length
                self.on_frame(kind, flags, sid & MAX_WINDOW, payload)
        except _ConnectionError as exc:
            self.fail(exc.code, str(exc))
            return
        del buffer[:at]
        if self.received > MAX_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        self.flush()

    def on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.headers is not None and kind != CONT:
            raise _ConnectionError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == WINDOW_UPDATE:  # the most frequent: two per answer
            self.on_window_update(sid, int.from_bytes(payload[:4]) & MAX_WINDOW)
        elif kind == DATA:
            self.on_data(flags, sid, payload)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self.on_headers(sid, flags, payload)
            else:
                self.headers = (sid, flags, bytearray(payload))
        elif kind == CONT:
            if self.headers is None or self.headers[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.headers[2].extend(payload)
            if flags & END_HEADERS:
                first, self.headers = self.headers, None
                self.on_headers(sid, first[1], bytes(first[2]))
        elif kind == SETTINGS:
            if not flags & ACK:
                self.on_settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if (stream := self.streams.get(sid)) is not None:
                self.close_stream(stream)  # its work is cancelled
        elif kind == GOAWAY:
            self.going_away = True
        elif kind == PUSH:
            raise _ConnectionError(PROTOCOL_ERROR, "clients do not push")
        # PRIORITY and unknown frames are ignored, as RFC 9113 allows.

    def on_settings(self, payload: bytes) -> None:
        for at in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, at)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.window += delta
            elif key == 0x5:
                self.peer_frame = value
        self.write(frame(SETTINGS, ACK, 0))
        self.send_pending()

    def on_window_update(self, sid: int, increment: int) -> None:
        if sid == 0:
            self.send_window += increment
        elif (stream := self.streams.get(sid)) is not None:
            stream.window += increment
        if self.blocked:
            self.send_pending()

    def on_headers(self, sid: int, flags: int, block: bytes) -> None:
        try:
            head = self.decoder.decode(block)
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if sid in self.streams:  # trailers of a streaming call: its end
            if flags & END_STREAM:
                self.end_of_input(self.streams[sid])
            return
        if sid <= self.last_id:
            return  # a stream closed already (answered or reset): nothing left to do
        if sid % 2 == 0:
            raise _ConnectionError(PROTOCOL_ERROR, f"stream {sid} cannot start here")
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self.write(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return
        self.last_id = sid
        self.start(sid, head, flags & END_STREAM != 0)

    def start(self, sid: int, head: Head, ended: bool) -> None:
        if not head.grpc:
            status = literal(b":status", b"415")  # not gRPC at all: an HTTP answer
            self.write(frame(HEADERS, END_HEADERS | END_STREAM, sid, status))
            return
        stream = _Stream(sid, Call(head.path, head.metadata, head.timeout_s), self.peer_window)
        self.streams[sid] = stream
        method = self.methods.get(head.path)
        if method is None or head.problem is not None:
            problem = head.problem or GrpcError(
                Status.UNIMPLEMENTED, f"method {head.path} is not served here"
            )
            self.respond_error(stream, problem.code, str(problem))
            return
        stream.method = method
        if method.streaming is not None:
            stream.queue = asyncio.Queue()
            stream.task = asyncio.get_running_loop().create_task(self.run_streaming(stream))
        if ended:
            self.end_of_input(stream)

    def on_data(self, flags: int, sid: int, payload: bytes) -> None:
        self.received += len(payload)
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream = self.streams.get(sid)
        if stream is None:
            return  # reset, or answered already (e.g. refused): its bytes count, nothing else
        body = stream.body
        body += payload
        # The length prefix says it before the bytes come (the stream's window may not let
        # them come at all).
        if len(body) >= 5 and (size := _PREFIX.unpack_from(body)[1]) > self.max_message:
            limit = f"the message of {size} bytes is over the limit of {self.max_message} bytes"
            self.respond_error(stream, Status.RESOURCE_EXHAUSTED, limit)
            self.write(frame(RST_STREAM, 0, sid, struct.pack(">I", NO_ERROR)))  # stop sending
            return
        if stream.queue is not None:
            self.deliver(stream)
            self.write(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", len(payload) or 1)))
        if flags & END_STREAM:
            self.end_of_input(stream)

    def deliver(self, stream: _Stream) -> list[bytes] | None:
        """Whole messages out of ``stream.body`` (to its queue when streaming); None after
        answering a compressed one."""
        body, messages, at = stream.body, [], 0
        while len(body) - at >= 5:
            compressed, length = _PREFIX.unpack_from(body, at)
            if len(body) - at - 5 < length:
                break
            if compressed:
                self.respond_error(stream, Status.UNIMPLEMENTED, COMPRESSED)
                return None
            messages.append(bytes(body[at + 5 : at + 5 + length]))
            at += 5 + length
        del body[:at]
        if stream.queue is not None:
            for message in messages:
                stream.queue.put_nowait(message)
        return messages

    def end_of_input(self, stream: _Stream) -> None:
        if stream.queue is not None:
            stream.queue.put_nowait(None)
            return
        if stream.method.unary is None or stream.task is not None:
            return
        messages = self.deliver(stream)
        if messages is None:
            return
        if len(messages) != 1 or stream.body:
            why = f"a unary call takes exactly one message, {len(messages)} came"
            self.respond_error(stream, Status.INVALID_ARGUMENT, why)
            return
        stream.task = asyncio.get_running_loop().create_task(self.run_unary(stream, messages[0]))

    # -- answering -----------------------------------------------------------------------------

    async def run_unary(self, stream: _Stream, message: bytes) -> None:
        idle = self.server.idle
        idle.begin(self)
        try:
            await self._run_unary(stream, message)
        finally:
            idle.end()

    async def _run_unary(self, stream: _Stream, message: bytes) -> None:
        assert stream.method.unary is not None
        try:
            answer = await stream.method.unary(stream.call, message)
        except GrpcError as exc:
            self.respond_error(stream, exc.code, str(exc))
            return
        except asyncio.CancelledError:  # the client reset the stream, or the connection went
            return
        except Exception:
            log.exception("unexpected error in %s", stream.call.method)
            self.respond_error(stream, Status.INTERNAL, "internal error")
            return
        message = _PREFIX.pack(0, len(answer)) + answer
        size, sid = len(message), stream.id
        if sid in self.streams and size <= min(stream.window, self.send_window, self.peer_frame):
            # The whole answer in one go, as nearly every one goes.
            stream.window -= size
            self.send_window -= size
            status = status_block(Status.OK, "", stream.call.trailers)
            self.write(
                frame(HEADERS, END_HEADERS, sid, _RESPONSE)
                + frame(DATA, 0, sid, message)
                + frame(HEADERS, END_HEADERS | END_STREAM, sid, status)
            )
            self.close_stream(stream)
            return
        self.send_message(stream, answer)
        self.send_status(stream, Status.OK, "")

    async def run_streaming(self, stream: _Stream) -> None:
        assert stream.method.streaming is not None
        assert stream.queue is not None
        queue = stream.queue

        async def requests() -> AsyncIterator[bytes]:
            while (message := await queue.get()) is not None:
                yield message

        try:
            async for answer in stream.method.streaming(stream.call, requests()):
                self.send_message(stream, answer)
        except GrpcError as exc:
            self.respond_error(stream, exc.code, str(exc))
            return
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unexpected error in %s", stream.call.method)
            self.respond_error(stream, Status.INTERNAL, "internal error")
            return
        self.send_status(stream, Status.OK, "")

    def respond_error(self, stream: _Stream, code: Status, message: str) -> None:
        if stream.sent:
            self.send_status(stream, code, message)
            return
        # Trailers-only: status and headers in one block.
        block = _RESPONSE + status_block(code, message, stream.call.trailers)
        self.write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self.close_stream(stream)

    def send_message(self, stream: _Stream, message: bytes) -> None:
        if stream.id not in self.streams:
            return  # closed meanwhile (e.g. answered a message over the limit)
        if not stream.sent:
            stream.sent = True
            self.write(frame(HEADERS, END_HEADERS, stream.id, _RESPONSE))
        stream.pending.append(memoryview(_PREFIX.pack(0, len(message)) + message))
        self.send_data(stream)

    def send_status(self, stream: _Stream, code: Status, message: str) -> None:
        if stream.id in self.streams:
            stream.status = status_block(code, message, stream.call.trailers)
            self.send_data(stream)

    def send_data(self, stream: _Stream) -> None:
        """What the windows allow of ``stream``'s pending data, then its trailers."""
        pending = stream.pending
        while pending:
            chunk = pending[0]
            allowed = min(stream.window, self.send_window, self.peer_frame)
            if allowed <= 0:
                self.blocked.add(stream)
                return
            part = chunk[:allowed]
            self.write(frame(DATA, 0, stream.id, part))
            stream.window -= len(part)
            self.send_window -= len(part)
            if len(chunk) > allowed:
                pending[0] = chunk[allowed:]  # a memoryview: no copy of the rest
            else:
                pending.popleft()
        self.blocked.discard(stream)
        if stream.status is not None:
            self.write(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, stream.status))
            self.close_stream(stream)

    def send_pending(self) -> None:
        for stream in list(self.blocked):
            self.send_data(stream)

    def close_stream(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.discard(stream)
        if stream.task is not None and stream.task is not asyncio.current_task():
            stream.task.cancel()  # answered from here (e.g. a message over the limit)
        if self.going_away and not self.streams and self.transport is not None:
            self.flush()
            self.transport.close()


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Http2Server:
    """Listens, hands each connection a :class:`Connection`, stops gracefully."""

    def __init__(
        self,
        methods: dict[str, Method],
        max_message: int,
        max_header_bytes: int = 16_384,
        idle: IdlePoll | None = None,
    ) -> None:
        self.methods = methods
        self.idle = idle or IdlePoll(0)
        """Unary calls in flight, counted with the HTTP requests of the same process."""
        self.max_message = max_message
        self.max_header_bytes = max_header_bytes
        self.stream_window = min(MAX_WINDOW, max_message + 5)
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, shared: bool = False) -> int:
        """Listen on ``host:port``; the port bound (OSError when it cannot be). ``shared``:
        with ``SO_REUSEPORT``, for server processes that all serve the port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self), host, port, backlog=2048, reuse_port=shared or None
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """No new connections or calls; calls in flight finish within ``grace_s``."""
        if self.server is not None:
            self.server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.goaway()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=grace_s)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
