"""uvicorn's httptools protocol, writing each small response with one system call.

uvicorn writes a response's head and its body with two ``transport.write`` calls, and uvloop
sends each at once: two ``send`` system calls per response, each a full trip through the
loopback TCP stack. For the small answers of single-row predictions that is a large share of
the event loop's time. Here the head is held until the body follows (in the same step of the
same task, as a fixed-length response sends it) and both go out in one write. A held head is
never left behind: anything else done with the transport, or the end of the current loop
iteration, sends it first, so ordering and timing stay as uvicorn intends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"  # 100 Continue: the client waits for it before sending the body
_JOIN_LIMIT = 64 * 1024
"""Bodies up to this size are copied after the head (one buffer); bigger ones are handed to
``writelines`` with it, without a copy."""


class _HeadHolding:
    """A transport that holds a response head until the next write (see the module docs);
    everything else is passed to the real transport."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(held + bytes(data))
            else:
                self._transport.writelines([held, data])
        elif isinstance(data, bytes) and data.startswith(_HEAD) and not data.startswith(_INTERIM):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over a head-holding transport (``http=`` of uvicorn)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        holding = _HeadHolding(transport, self.loop)
        super().connection_made(holding)  # type: ignore[arg-type]
