"""Coupling ``uvloop-accept``: uvloop, except that a TCP server accepts every pending
connection whenever its listening socket is readable, as asyncio does, and that each of several
server processes listens on a socket of its own.

It replaces ``uvloop.Loop.create_server`` for plain TCP servers (uvloop's own listener is
private to its Cython code) and hands each accepted socket to the public
``connect_accepted_socket``. Given the socket uvicorn's supervisor bound for its server
processes, it listens on a new ``SO_REUSEPORT`` socket on the same address instead. This
module imports uvloop: uvicorn imports it (by the name in :func:`loop_setting`) only when this
loop is chosen. Tested versions and the fallback (plain uvloop) are in
:data:`serving.couplings.UVLOOP_ACCEPT`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvloop

log = logging.getLogger("servewell")


def _bound(sock: socket.socket | None) -> bool:
    """A TCP socket bound to an address and not listening yet (as uvicorn's supervisor hands
    it to its server processes)."""
    return (
        sock is not None
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    )


class GreedyAcceptLoop(uvloop.Loop):
    """uvloop, except that a TCP server accepts every pending connection whenever its
    listening socket is readable, as asyncio does.

    The libuv in uvloop accepts one connection per loop iteration (libuv PR #3696). Under load
    one iteration runs hundreds of requests, so connections opened in a burst wait in the
    kernel's accept queue for seconds (measured at 1000 connections: up to 900 still queued
    3.6 s into a 5 s run, the accepted ones served in 0.1-0.5 s; see bench/README.md). Only
    accepting changes: each connection then runs exactly as under plain uvloop.

    Server processes sharing one listening socket raced for each burst: one of two took all
    of 8 new connections in 3 of 8 tries, and at c=1000 the busy loops left connections
    queued for seconds. Each process listening on its own ``SO_REUSEPORT`` socket, the kernel
    spreads connections over them and each accepts greedily from its own queue.
    """

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Any, host: str | None = None, port: int | None = None, **kw: Any
    ) -> asyncio.AbstractServer:
        given = {name for name, value in kw.items() if value is not None}  # uvicorn: ssl=None
        backlog: int = kw.get("backlog", 100)
        inherited: socket.socket | None = kw.get("sock")
        if host is None and port is None and given <= {"backlog", "sock"} and _bound(inherited):
            # uvicorn's server processes all get the socket their supervisor bound (and does
            # not listen on): each listens on a socket of its own on the same address.
            assert inherited is not None
            inherited.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own = socket.socket(inherited.family, socket.SOCK_STREAM)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(inherited.getsockname())
            own.listen(backlog)
            own.setblocking(False)
            return _Listener(self, own, protocol_factory, backlog)
        if host is None or port is None or given - {"backlog", "reuse_port"}:
            plain: Any = super().create_server  # its overloads do not fit a pass-through
            server: asyncio.AbstractServer = await plain(protocol_factory, host, port, **kw)
            return server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        shared = bool(kw.get("reuse_port"))  # server processes that all listen on the port
        sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=shared)
        sock.setblocking(False)
        return _Listener(self, sock, protocol_factory, backlog)


class _Listener(asyncio.AbstractServer):
    """A listening socket whose readiness callback accepts up to ``backlog`` connections and
    hands each to the loop as an accepted socket (the loop then owns and closes it)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Any, backlog: int
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._backlog = backlog
        self._serving = True
        self._connecting: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._serving else ()

    def _accept(self) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # e.g. out of file descriptors: retry in a second
                log.error("cannot accept a connection: %s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(1.0, self._resume)
                return
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:  # the client went away before the transport was set up
            conn.close()

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        pass

    async def serve_forever(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        pass
