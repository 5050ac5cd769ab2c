"""Closing Triton's HTTP client for good."""

from __future__ import annotations

from typing import Any


def release(client: Any) -> None:
    """Close ``client`` once. Its ``__del__`` closes it again, joining a gevent pool, which
    gevent refuses from any thread but the one that made it; the garbage collector may run it
    in a server's or gRPC's thread, and the refusal then fails whichever test runs next."""
    client.close()
    client.close = lambda: None  # what __del__ calls: closed already
