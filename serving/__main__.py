"""``python -m serving``: serve the model store with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import logging.config
import os
import shutil
import signal
import socket
import tempfile
from typing import Any

import uvicorn
import uvloop

from serving.http.protocol import ConnectionLimits, http_protocol
from serving.http.shutdown import exit_cleanly_on_signals
from serving.observe.logs import log_config, resolve_format
from serving.settings import Settings, default_max_connections

log = logging.getLogger("servewell")


class GreedyAcceptLoop(uvloop.Loop):
    """uvloop, except that a TCP server accepts every pending connection whenever its
    listening socket is readable, as asyncio does.

    The libuv in uvloop accepts one connection per loop iteration (libuv PR #3696). Under load
    one iteration runs hundreds of requests, so connections opened in a burst wait in the
    kernel's accept queue for seconds (measured at 1000 connections: up to 900 still queued
    3.6 s into a 5 s run, the accepted ones served in 0.1-0.5 s; see bench/README.md). Only
    accepting changes: each connection then runs exactly as under plain uvloop.
    """

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Any, host: str | None = None, port: int | None = None, **kw: Any
    ) -> asyncio.AbstractServer:
        if host is None or port is None or kw.get("sock") is not None or kw.get("ssl"):
            plain: Any = super().create_server  # its overloads do not fit a pass-through
            server: asyncio.AbstractServer = await plain(protocol_factory, host, port, **kw)
            return server
        backlog: int = kw.get("backlog", 100)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
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


def create_app() -> Any:
    """The service (``serving.http.app.create_app``) for uvicorn, in each server process. With
    ``gc_freeze`` (default), every object alive once it is built (modules, routes, schemas:
    about 70 000) is then moved out of the garbage collector's reach: otherwise each full
    collection walks them all, which under load stalled the event loop for 0.1-0.3 s every
    few seconds (measured on a 2-core box), delaying every request in flight, refusals too."""
    from serving.http.app import create_app as build  # heavy: only in the server processes

    settings = Settings()
    app = build(settings)
    if settings.gc_freeze:
        gc.collect()  # what is garbage already is freed rather than frozen
        gc.freeze()
    return app


# uvicorn's ``loop`` for each ``SERVEWELL_LOOP``.
_LOOPS = {
    "uvloop": "serving.__main__:GreedyAcceptLoop",
    "uvloop-libuv-accept": "uvloop",
    "asyncio": "asyncio",
}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments for uvicorn (``uvicorn.run`` and ``uvicorn.Config`` take the
    same) that serve with ``settings``: ``python -m serving`` and the test server both start
    uvicorn with them, so the tests run what users run."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        max_connections=settings.max_connections or default_max_connections(),
        retry_after_s=settings.retry_after_s,
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # The service writes its own access log (SERVEWELL_ACCESS_LOG), off the hot path.
        "access_log": False,
        # It builds no URLs and logs no client addresses, so X-Forwarded-* would change
        # nothing it does: skip parsing them on every request.
        "proxy_headers": False,
        # Naming the server software only helps whoever looks for a known flaw in it.
        "server_header": False,
        "loop": _LOOPS[settings.loop],
        "http": http_protocol(limits),
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "limit_concurrency": settings.limit_concurrency,
        "backlog": settings.backlog,
    }


_FLAGS = {
    "host": "interface to listen on",
    "port": "TCP port (0 picks a free one)",
    "store": "model store root",
    "workers": "server processes sharing the port",
    "log-level": "critical, error, warning, info or debug",
}
"""Command-line flags: the settings people most often change per run. Each one sets its
``SERVEWELL_<NAME>`` variable, so server processes started by uvicorn read it too."""


def parse_args(argv: list[str] | None) -> None:
    """Read the command line into the environment (``--help`` prints usage and exits)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve every model in the store: typed REST endpoints and the Open "
        "Inference Protocol. Every setting is also an environment variable SERVEWELL_<NAME> "
        "(docs/operations.md lists them all); a flag overrides its variable.",
    )
    for flag, help_text in _FLAGS.items():
        variable = "SERVEWELL_" + flag.replace("-", "_").upper()
        default = os.environ.get(variable)
        shown = f" (now {default} from {variable})" if default else f" ({variable})"
        parser.add_argument(
            f"--{flag}", help=help_text + shown, metavar=flag.split("-")[-1].upper()
        )
    args = parser.parse_args(argv)
    for flag in _FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            os.environ["SERVEWELL_" + flag.replace("-", "_").upper()] = value


def main(argv: list[str] | None = None) -> None:
    """Start the service with the settings from the command line and the environment;
    Ctrl-C stops it cleanly."""
    parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: name the setting, no traceback
        raise SystemExit(f"servewell: invalid settings: {exc}") from None
    logging_config = log_config(settings.log_level, resolve_format(settings.log_format))
    logging.config.dictConfig(logging_config)
    shared_dir = None
    if settings.workers > 1 and settings.metrics and settings.metrics_dir is None:
        # The worker processes read their settings from the environment: share a fresh
        # directory for their metrics snapshots (removed on exit).
        shared_dir = tempfile.mkdtemp(prefix="servewell-metrics-")
        os.environ["SERVEWELL_METRICS_DIR"] = shared_dir
    print(
        f"servewell: serving {settings.store.resolve()} on http://{settings.host}:{settings.port}"
    )
    print(f"servewell: API docs at http://{settings.host}:{settings.port}/docs", flush=True)
    with exit_cleanly_on_signals() as received:
        try:
            uvicorn.run(
                "serving.__main__:create_app",
                factory=True,
                workers=settings.workers,
                log_config=logging_config,
                **uvicorn_options(settings),
            )
        finally:
            if shared_dir is not None:
                shutil.rmtree(shared_dir, ignore_errors=True)
    if received:
        print(f"servewell: stopped on {signal.Signals(received[0]).name}", flush=True)


if __name__ == "__main__":
    main()
