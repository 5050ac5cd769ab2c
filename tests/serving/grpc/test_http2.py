"""The HTTP/2 transport under grpcio's own client (and a raw socket where a client would not
misbehave): metadata and trailers, deadlines, flow control with messages far over the windows,
status codes and messages, cancellation, streaming, graceful stop, and what is not gRPC."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest
from hpack import Decoder, Encoder

from serving.grpc.calls import Call, GrpcError, Method, Status
from serving.grpc.http2 import PREFACE, Http2Server
from tests.serving.process import free_port

T = TypeVar("T")
LIMIT = 8 * 1024 * 1024
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class Handlers:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    async def echo(self, call: Call, body: bytes) -> bytes:
        call.trailers.append(("x-seen", call.metadata.get("x-in", "")))
        call.trailers.append(("x-timeout", repr(call.timeout_s)))
        return body

    async def big(self, call: Call, body: bytes) -> bytes:
        return b"y" * int(body)

    async def fail(self, call: Call, body: bytes) -> bytes:
        raise RuntimeError("a fault of the handler")

    async def refuse(self, call: Call, body: bytes) -> bytes:
        raise GrpcError(Status.NOT_FOUND, body.decode())

    async def slow(self, call: Call, body: bytes) -> bytes:
        try:
            await asyncio.sleep(float(body))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"done"

    async def chat(self, call: Call, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message
            yield message[::-1]

    def methods(self) -> dict[str, Method]:
        unary = {"Echo": self.echo, "Big": self.big, "Fail": self.fail}
        unary |= {"Refuse": self.refuse, "Slow": self.slow}
        methods = {f"/t.T/{name}": Method(unary=fn) for name, fn in unary.items()}
        return methods | {"/t.T/Chat": Method(streaming=self.chat)}


class Background:
    """An Http2Server on its own event loop thread."""

    def __init__(self) -> None:
        self.handlers = Handlers()
        self.server = Http2Server(self.handlers.methods(), LIMIT)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.run(self.server.start("127.0.0.1", free_port()))
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Background]:
    background = Background()
    yield background
    background.close()


@pytest.fixture
def channel(served: Background) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address, options=UNLIMITED) as c:
        yield c


def test_metadata_in_trailers_out_and_the_deadline_seen(channel: grpc.Channel) -> None:
    echo = channel.unary_unary("/t.T/Echo")
    answer, call = echo.with_call(b"hello", metadata=[("x-in", "there")], timeout=5)
    assert answer == b"hello"
    trailers = dict(call.trailing_metadata())
    assert trailers["x-seen"] == "there"
    assert 4.0 < float(trailers["x-timeout"]) <= 5.0
    assert dict(echo.with_call(b"")[1].trailing_metadata())["x-timeout"] == "None"


def test_messages_far_over_the_flow_control_windows_go_both_ways(channel: grpc.Channel) -> None:
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB, 48 times the default window
    assert channel.unary_unary("/t.T/Echo")(body, timeout=30) == body
    big = channel.unary_unary("/t.T/Big")
    answers = [big.future(str(n).encode()) for n in (5_000_000, 70_000, 1)]
    assert [len(f.result(timeout=30)) for f in answers] == [5_000_000, 70_000, 1]


def test_status_codes_and_messages(channel: grpc.Channel) -> None:
    def code_of(path: str, body: bytes = b"", **kw: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(path)(body, timeout=10, **kw)
        return caught.value.code(), caught.value.details()

    assert code_of("/t.T/Nope") == (
        grpc.StatusCode.UNIMPLEMENTED,
        "method /t.T/Nope is not served here",
    )
    message = "no model 'äpfel' (100 % sure)\nsecond line"
    assert code_of("/t.T/Refuse", message.encode()) == (grpc.StatusCode.NOT_FOUND, message)
    assert code_of("/t.T/Fail") == (grpc.StatusCode.INTERNAL, "internal error")
    code, details = code_of("/t.T/Echo", b"x" * 100, compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "compressed" in details
    code, details = code_of("/t.T/Echo", b"x" * (LIMIT + 1))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in details
    assert channel.unary_unary("/t.T/Echo")(b"still fine", timeout=10) == b"still fine"


def test_a_cancelled_call_cancels_its_work(served: Background, channel: grpc.Channel) -> None:
    pending = channel.unary_unary("/t.T/Slow").future(b"30")
    time.sleep(0.3)
    pending.cancel()
    assert served.handlers.cancelled.wait(5)


def test_an_expired_deadline_cancels_the_work(served: Background, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/t.T/Slow")(b"30", timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.handlers.cancelled.wait(5)


def test_streaming_calls(channel: grpc.Channel) -> None:
    chat = channel.stream_stream("/t.T/Chat")
    assert list(chat(iter([b"ab", b"cd", b""]), timeout=10)) == [
        b"ab",
        b"ba",
        b"cd",
        b"dc",
        b"",
        b"",
    ]


def test_a_graceful_stop_finishes_calls_in_flight(served: Background) -> None:
    with grpc.insecure_channel(served.address) as channel:
        slow = channel.unary_unary("/t.T/Slow")
        assert slow(b"0", timeout=10) == b"done"  # connected
        pending = slow.future(b"0.5", timeout=10)
        time.sleep(0.1)
        served.run(served.server.stop(5))
        assert pending.result() == b"done"
        with pytest.raises(grpc.RpcError) as caught:
            slow(b"0", timeout=2)
        assert caught.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


def _frames(sock: socket.socket, until: Any) -> list[tuple[int, int, int, bytes]]:
    """Frames read until ``until(frame)`` holds (or the peer closes)."""
    got, buffer = [], b""
    sock.settimeout(5)
    while True:
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3]):
            length = int.from_bytes(buffer[:3])
            kind, flags, sid = buffer[3], buffer[4], int.from_bytes(buffer[5:9]) & 0x7FFFFFFF
            got.append((kind, flags, sid, buffer[9 : 9 + length]))
            buffer = buffer[9 + length :]
            if until(got[-1]):
                return got
        data = sock.recv(65536)
        if not data:
            return got
        buffer += data


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3) + bytes([kind, flags]) + sid.to_bytes(4) + payload


def test_pings_are_answered_and_what_is_not_grpc_gets_http_415(served: Background) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(PREFACE + _frame(4, 0, 0) + _frame(6, 0, 0, b"12345678"))
        frames = _frames(sock, lambda f: f[0] == 6)
        assert frames[-1] == (6, 1, 0, b"12345678")  # PING ACK with the same bytes
        block = Encoder().encode([(":method", "POST"), (":path", "/t.T/Echo"), (":scheme", "http"),
                                  ("content-type", "application/json")])  # fmt: skip
        sock.sendall(_frame(1, 0x5, 1, block))
        frames = _frames(sock, lambda f: f[0] == 1 and f[2] == 1)
        assert dict(Decoder().decode(frames[-1][3], raw=True)) == {b":status": b"415"}


def test_a_client_that_does_not_speak_http2_is_let_go(served: Background) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = _frames(sock, lambda f: False)  # until closed
        assert frames
        assert frames[-1][0] == 7  # GOAWAY
        assert struct.unpack(">II", frames[-1][3][:8])[1] == 1  # PROTOCOL_ERROR
    with grpc.insecure_channel(served.address) as channel:
        assert channel.unary_unary("/t.T/Echo")(b"ok", timeout=10) == b"ok"
