"""uvicorn's protocol as the service runs it (the ``uvicorn-http`` coupling): one write per
response (a held head never left behind; every integration test runs the real server on it
too), and the limits on connections and request heads, over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving import couplings
from serving.couplings import uvicorn_http
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server
from tests.serving.raw_http import until_closed

# -- one write per response ------------------------------------------------------------------

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """Records what reaches the socket's transport."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.closing:
            raise RuntimeError("unable to perform operation on a closed transport")
        self.calls.append(("write", data))

    def writelines(self, chunks: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", list(chunks)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def set_protocol(self, protocol: object) -> None:
        self.calls.append(("set_protocol", protocol))

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.calls.append(("pause_reading", None))

    def resume_reading(self) -> None:
        self.calls.append(("resume_reading", None))


@pytest.fixture
def one_write() -> Iterator[tuple[Any, Recording, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    real = Recording()
    heads = uvicorn_http._HeldHeads(loop)
    yield uvicorn_http._OneWrite(real, heads), real, loop  # type: ignore[arg-type]
    loop.close()


Wrapped = tuple[Any, Recording, asyncio.AbstractEventLoop]


def test_a_head_and_its_small_body_go_out_in_one_write(one_write: Wrapped) -> None:
    transport, real, _ = one_write
    transport.write(HEAD)
    assert real.calls == []
    transport.write(b"{}")
    assert real.calls == [("write", HEAD + b"{}")]
    transport.write(HEAD)  # the next response on the connection: held again
    transport.write(b"[]")
    assert real.calls[1:] == [("write", HEAD + b"[]")]


def test_a_head_without_its_body_goes_out_at_the_end_of_the_loop_iteration(
    one_write: Wrapped,
) -> None:
    transport, real, loop = one_write

    async def only_head() -> None:
        transport.write(HEAD)
        assert real.calls == []
        await asyncio.sleep(0)  # the flush was scheduled before this task resumes
        assert real.calls == [("write", HEAD)]
        transport.write(b"{}")  # a body that came later goes after it
        assert real.calls == [("write", HEAD), ("write", b"{}")]

    loop.run_until_complete(only_head())


def test_interim_responses_and_later_chunks_are_not_held(one_write: Wrapped) -> None:
    transport, real, _ = one_write
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.write(b"chunk")
    assert real.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n"), ("write", b"chunk")]


@pytest.mark.parametrize("action", ["close", "set_protocol"])
def test_closing_or_handing_over_the_connection_sends_a_held_head_first(
    one_write: Wrapped, action: str
) -> None:
    transport, real, _ = one_write
    transport.write(HEAD)
    if action == "close":
        transport.close()
        assert real.calls == [("write", HEAD), ("close", None)]
    else:
        transport.set_protocol("websocket")
        assert real.calls == [("write", HEAD), ("set_protocol", "websocket")]


def test_a_head_held_on_a_connection_closed_underneath_is_dropped_quietly(
    one_write: Wrapped,
) -> None:
    transport, real, loop = one_write
    other_real = Recording()
    other = uvicorn_http._OneWrite(other_real, transport._heads)  # type: ignore[arg-type]
    transport.write(HEAD)
    other.write(HEAD)
    real.closing = True  # the peer went away before the end of the iteration
    loop.run_until_complete(asyncio.sleep(0))
    assert real.calls == []
    assert other_real.calls == [("write", HEAD)]  # the other connection's head still went out


def test_an_aborted_connection_drops_a_held_head(one_write: Wrapped) -> None:
    transport, real, loop = one_write
    transport.write(HEAD)
    transport.abort()
    loop.run_until_complete(asyncio.sleep(0))  # the end-of-iteration flush finds nothing
    assert real.calls == [("abort", None)]


def test_big_bodies_are_not_copied_and_the_rest_passes_through(one_write: Wrapped) -> None:
    transport, real, _ = one_write
    body = b"x" * (uvicorn_http._JOIN_LIMIT + 1)
    transport.write(HEAD)
    transport.write(body)
    assert real.calls == [("writelines", [HEAD, body])]
    assert transport.get_extra_info("socket") == "info:socket"
    assert transport.is_closing() is False
    transport.pause_reading()
    transport.resume_reading()
    assert real.calls[1:] == [("pause_reading", None), ("resume_reading", None)]


# -- limits on connections and heads, on the real server --------------------------------------

HEADER_TIMEOUT = 1.0
HEADER_BYTES = 4096
HEADERS = 20
CONNECTIONS = 4
_ROW = json.dumps({"rows": [IRIS_ROW]}).encode()
PREDICT = (
    b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_ROW), _ROW)
)
READY = b"GET /health/ready HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(trained_store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(
        trained_store,
        pool_size=1,
        poll_interval_s=0,
        header_timeout_s=HEADER_TIMEOUT,
        max_header_bytes=HEADER_BYTES,
        max_headers=HEADERS,
        max_connections=CONNECTIONS,
    )
    with running_server(settings) as server:
        yield server


def _connect(server: RunningServer) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    return sock


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response (head, body) with a Content-Length, the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def _no_connections_left(server: RunningServer) -> None:
    """Wait until the server has seen every earlier connection go."""
    deadline = time.monotonic() + 10
    while server.server.server_state.connections and time.monotonic() < deadline:
        time.sleep(0.02)


def _json_error(answer: bytes, status: bytes) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), answer[:300]
    assert b"connection: close" in head.lower()
    assert b"content-type: application/json" in head.lower()
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def test_a_head_sent_slowly_is_closed_after_the_header_timeout(guarded: RunningServer) -> None:
    _no_connections_left(guarded)
    with _connect(guarded) as slow:
        started = time.monotonic()
        slow.sendall(b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\n")
        closed = False
        for i in range(30):  # a header line every 0.2 s, for up to 6 s
            time.sleep(0.2)
            try:
                slow.sendall(f"x-drip-{i}: 1\r\n".encode())
            except OSError:
                closed = True
                break
            if i == 1:  # meanwhile, a normal client is served
                with httpx.Client(base_url=guarded.url, timeout=10) as client:
                    ok = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
                    assert ok.status_code == 200, ok.text
        answer = until_closed(slow)
        elapsed = time.monotonic() - started
    assert closed or answer, "the slow head was never cut off"
    assert HEADER_TIMEOUT * 0.9 < elapsed < HEADER_TIMEOUT + 2.5
    if answer:  # the 408 may be lost when the client's next bytes meet a closed socket
        assert "1 s" in _json_error(answer, b"408")["message"]


def test_a_connection_that_sends_nothing_is_closed_silently(guarded: RunningServer) -> None:
    with _connect(guarded) as idle:
        started = time.monotonic()
        assert until_closed(idle) == b""
        assert HEADER_TIMEOUT * 0.9 < time.monotonic() - started < HEADER_TIMEOUT + 2.5


def test_on_a_kept_alive_connection_the_clock_starts_at_the_next_request(
    guarded: RunningServer,
) -> None:
    with _connect(guarded) as sock:
        sock.sendall(READY)
        head, _ = _response(sock)
        assert head.startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle: uvicorn's keep-alive timeout (5 s) governs
        sock.sendall(READY)
        assert _response(sock)[0].startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"GET /health/ready HTTP/1.1\r\n")  # and no more
        answer = until_closed(sock)
        assert HEADER_TIMEOUT * 0.9 < time.monotonic() - started < HEADER_TIMEOUT + 2.5
    assert _json_error(answer, b"408")["type"] == "request_timeout"


def test_blank_lines_between_requests_do_not_hold_a_connection(guarded: RunningServer) -> None:
    with _connect(guarded) as sock:
        sock.sendall(READY)
        assert _response(sock)[0].startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"\r\n")  # stops uvicorn's keep-alive timer, begins no request
        assert until_closed(sock) == b""
        assert time.monotonic() - started < HEADER_TIMEOUT + 2.5


def test_beyond_the_connection_limit_new_connections_are_refused_at_once(
    guarded: RunningServer,
) -> None:
    _no_connections_left(guarded)
    held = [_connect(guarded) for _ in range(CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(READY)
            assert _response(sock)[0].startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        with _connect(guarded) as extra:
            answer = until_closed(extra)
        assert time.monotonic() - started < 1.0
        if answer:
            assert b"retry-after: 1" in answer.lower()
            assert _json_error(answer, b"503")["type"] == "overloaded"
        for sock in held:  # the connections already open are served as before
            sock.sendall(PREDICT)
            head, body = _response(sock)
            assert head.startswith(b"HTTP/1.1 200"), body
    finally:
        for sock in held:
            sock.close()
    _no_connections_left(guarded)
    with httpx.Client(base_url=guarded.url, timeout=10) as client:  # room again
        assert client.get("/health/ready").status_code == 200


def test_an_oversize_head_is_431(guarded: RunningServer) -> None:
    with _connect(guarded) as sock:  # in one piece
        sock.sendall(b"GET /health/ready HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * HEADER_BYTES)
        sock.sendall(b"\r\n\r\n")
        error = _json_error(until_closed(sock), b"431")
    assert error == {
        "type": "headers_too_large",
        "message": f"the request line and headers exceed {HEADER_BYTES} bytes",
        "details": [],
    }
    with _connect(guarded) as sock:  # one header value that never ends, in pieces
        sock.sendall(b"GET /health/ready HTTP/1.1\r\nhost: t\r\nx-big: ")
        for _ in range(10):
            try:
                sock.sendall(b"a" * 1024)
            except OSError:
                break
            time.sleep(0.05)
        _json_error(until_closed(sock), b"431")
    with _connect(guarded) as sock:  # a long URL
        sock.sendall(b"GET /health/ready?" + b"q" * HEADER_BYTES + b" HTTP/1.1\r\n\r\n")
        _json_error(until_closed(sock), b"431")


def test_too_many_headers_are_431_and_enough_are_served(guarded: RunningServer) -> None:
    lines = "".join(f"x-h{i}: {i}\r\n" for i in range(HEADERS))  # with host: one too many
    with _connect(guarded) as sock:
        sock.sendall(f"GET /health/ready HTTP/1.1\r\nhost: t\r\n{lines}\r\n".encode())
        error = _json_error(until_closed(sock), b"431")
    assert error["message"] == f"a request may carry at most {HEADERS} header lines"
    with _connect(guarded) as sock:
        sock.sendall(f"GET /health/ready HTTP/1.1\r\n{lines}\r\n".encode())
        assert _response(sock)[0].startswith(b"HTTP/1.1 200")


def test_answers_name_no_server_software_but_carry_a_date(guarded: RunningServer) -> None:
    with httpx.Client(base_url=guarded.url, timeout=10) as client:
        response = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
    assert response.status_code == 200
    assert "server" not in response.headers
    assert response.headers["date"]


def test_with_an_untested_uvicorn_the_stock_protocol_serves(
    trained_store: ModelStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    untested = dataclasses.replace(couplings.UVICORN_HTTP, tested=frozenset({"0.0.0"}))
    monkeypatch.setattr(uvicorn_http, "UVICORN_HTTP", untested)
    monkeypatch.setattr(couplings, "_warned", set())
    settings = quiet_settings(trained_store, pool_size=1, poll_interval_s=0, max_headers=5)
    with caplog.at_level(logging.WARNING, "servewell"), running_server(settings) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            many = {f"x-h{i}": "1" for i in range(10)}  # no limit without the guard
            response = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}, headers=many)
        assert response.status_code == 200, response.text
    assert "is not one servewell was tested with" in caplog.text
