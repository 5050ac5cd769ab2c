"""``python -m serving``: serve the model store with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from serving.couplings.loops import loop_setting
from serving.couplings.uvicorn_http import ConnectionLimits, http_protocol
from serving.execution.lifeline import signal_on_parent_death
from serving.http.shutdown import exit_cleanly_on_signals
from serving.observe.logs import log_config, resolve_format
from serving.settings import Settings, default_max_connections, default_workers

log = logging.getLogger("servewell")


def create_app() -> Any:
    """The service (``serving.http.app.create_app``) for uvicorn, in each server process. With
    ``gc_freeze`` (default), every object alive once it is built (modules, routes, schemas:
    about 70 000) is then moved out of the garbage collector's reach: otherwise each full
    collection walks them all, which under load stalled the event loop for 0.1-0.3 s every
    few seconds (measured on a 2-core box), delaying every request in flight, refusals too.
    The young generation is collected after ``gc_young_threshold`` allocations instead of
    Python's 700, which under load meant a collection every 50 or so requests."""
    from serving.http.app import create_app as build  # heavy: only in the server processes

    supervisor = multiprocessing.parent_process()
    if supervisor is not None and supervisor.pid is not None:
        # One of several server processes, started by uvicorn's supervisor: were that killed
        # outright (SIGKILL, the OOM killer), this process would go on holding the port.
        # Stop gracefully instead, as on the supervisor's own SIGTERM.
        signal_on_parent_death(supervisor.pid, signal.SIGTERM)
    settings = Settings()
    app = build(settings)
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_young_threshold, older, oldest)
    if settings.gc_freeze:
        _freeze()
        # The models load in the lifespan, after this: a few hundred objects each (a
        # hundred models made full collections take ~23 ms). Freeze again once they are in.
        started = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with started(app) as state:
                _freeze()
                yield state

        app.router.lifespan_context = lifespan
    return app


def _freeze() -> None:
    gc.collect()  # what is garbage already is freed rather than frozen
    gc.freeze()


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
        # No WebSocket routes: skip importing a WebSocket implementation in every process.
        "ws": "none",
        "loop": loop_setting(settings.loop, settings.stock_couplings),
        "http": http_protocol(limits, settings.stock_couplings),
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


def served_on_scikit_learn(settings: Settings) -> list[str]:
    """The store's models whose production version will run on scikit-learn, by their
    manifests and the runtime settings (none when the store cannot be read: loading reports
    that)."""
    from serving.execution.runtime import production_on_sklearn
    from serving.store import ModelStore

    store = ModelStore(settings.store, signing_key=settings.signing_key_bytes)
    return production_on_sklearn(store, settings.runtime_policy())


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
    if "workers" not in settings.model_fields_set and settings.workers > 1:
        on_scikit_learn = served_on_scikit_learn(settings)
        if on_scikit_learn:
            # Every server process reads its settings again: they must agree on the count.
            os.environ["SERVEWELL_WORKERS"] = str(default_workers(on_scikit_learn=True))
            settings = Settings()
            print(
                f"servewell: one server process, as {', '.join(on_scikit_learn)} run on "
                "scikit-learn (SERVEWELL_WORKERS sets the count)"
            )
    shared_dir = None
    if settings.workers > 1 and settings.metrics and settings.metrics_dir is None:
        # The worker processes read their settings from the environment: share a fresh
        # directory for their metrics snapshots (removed on exit).
        shared_dir = tempfile.mkdtemp(prefix="servewell-metrics-")
        os.environ["SERVEWELL_METRICS_DIR"] = shared_dir
    print(
        f"servewell: serving {settings.store.resolve()} on http://{settings.host}:{settings.port}"
    )
    print(f"servewell: web UI at http://{settings.host}:{settings.port}/ui")
    print(f"servewell: API docs at http://{settings.host}:{settings.port}/docs")
    if settings.grpc_port:
        where = f"{settings.host}:{settings.grpc_port}"
        print(f"servewell: Open Inference Protocol over gRPC on {where}")
    sys.stdout.flush()
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
