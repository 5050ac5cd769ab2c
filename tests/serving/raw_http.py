"""Raw-socket helpers for tests that need byte-level control of a connection."""

from __future__ import annotations

import socket


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most per read)."""
    sock.settimeout(10)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer
