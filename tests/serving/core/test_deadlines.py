"""Slow clients: a body that trickles in is cut off at the deadline (408), and many slow
connections do not keep the service from answering others."""

from __future__ import annotations

import socket

from serving.store import ModelStore
from tests.serving.conftest import RunningServer, quiet_settings, running_server


def _port(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _partial_post(port: int, extra_headers: str = "") -> socket.socket:
    """A predict request that promises 100 bytes of body and sends 10."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        + extra_headers.encode()
        + b"content-length: 100\r\n\r\n"
        + b'{"rows": [['
    )
    return sock


def _unanswered(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def _read_all(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    chunks = []
    while chunk := sock.recv(65536):  # until the server closes the connection
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_clients_are_cut_off_and_do_not_starve_others(trained_store: ModelStore) -> None:
    settings = quiet_settings(trained_store, pool_size=1, request_timeout_s=5.0)
    with running_server(settings) as server:
        port = _port(server)
        # A slowloris: many connections, each with a body that never completes; and some
        # that never finish their headers.
        slow = [_partial_post(port) for _ in range(300)]
        headless = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\ncontent-le")
            headless.append(sock)
        try:
            with server.client() as client:
                ok = client.post("/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
                assert ok.status_code == 200
            # Served while slow ones were still waiting for their bodies (not after them).
            assert _unanswered(slow[-1])
            answers = [_read_all(sock, 30) for sock in slow]
            assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:12] for a in answers}
            assert b'"request_timeout"' in answers[0]
            # A client may shorten its own deadline (the default here is 5 s).
            sock = _partial_post(port, "x-request-timeout: 0.3\r\n")
            answer = _read_all(sock, 30)
            sock.close()
            assert answer.startswith(b"HTTP/1.1 408")
            assert b"0.3 s" in answer
        finally:
            for sock in slow + headless:
                sock.close()
