"""`python -m serving` starts, serves, and stops on Ctrl-C without leaving processes behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.couplings.uvloop_accept import GreedyAcceptLoop
from serving.store import ModelStore
from tests.serving.process import ROOT, descendants
from tests.serving.process import free_port as _free_port
from tests.serving.process import start_serving as _start


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: set[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_and_stop_on_sigint(trained_store: ModelStore, loop: str) -> None:
    process, url = _start(trained_store, loop, inference="pool")
    try:
        workers = descendants(process.pid)
        assert len(workers) >= 2  # the pool's workers (and multiprocessing's resource tracker)
        ok = httpx.post(f"{url}/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
        assert ok.status_code == 200
        assert "server" not in ok.headers  # uvicorn's options are the test server's
        assert ok.headers["date"]

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert f"{url}/docs" in output
        assert f"web UI at {url}/ui" in output
        assert "Traceback" not in output
        assert not _wait_gone(workers, 5), "orphaned worker processes"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _cmdlines(pids: set[int]) -> list[str]:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_by_default_one_server_process_per_core_predicting_inline(
    trained_store: ModelStore, stop: signal.Signals
) -> None:
    """Every production version runs on ONNX Runtime: no pool. Stopped with Ctrl-C, or its
    supervisor killed outright: no process is left behind (one would hold the port, and the
    tests' pipes, open)."""
    cores = os.cpu_count() or 1
    process, url = _start(trained_store, workers="", pool_size="")  # the defaults
    try:
        children = descendants(process.pid)
        spawned = _cmdlines(children)
        # uvicorn's server processes (one process serves alone), and no pool worker
        processes = [c for c in spawned if "spawn_main" in c]
        assert len(processes) == (cores if cores > 1 else 0), spawned
        health = httpx.get(f"{url}/health/ready").json()
        assert health["executor"]["kind"] == "inline"
        answers = [httpx.post(f"{url}/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})]
        assert [a.status_code for a in answers] == [200]
        if stop == signal.SIGKILL:
            os.kill(process.pid, stop)  # the supervisor alone
            assert not _wait_gone(children, 30), _cmdlines(children)
            process.communicate(timeout=30)
            return
        os.killpg(process.pid, stop)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert "Traceback" not in output
        assert not _wait_gone(children, 5), "orphaned processes"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_by_default_one_server_process_when_a_model_runs_on_scikit_learn(
    trained_store: ModelStore,
) -> None:
    """Its worker saturates first: one process's larger batches serve more than two."""
    process, url = _start(
        trained_store, workers="", pool_size="", sklearn_models='["iris"]', log_level="info"
    )
    try:
        spawned = _cmdlines(descendants(process.pid))
        cores = os.cpu_count() or 1
        pool_workers = max(1, cores - 1)
        processes = [c for c in spawned if "spawn_main" in c]
        assert len(processes) == pool_workers, spawned  # the pool's, no uvicorn process
        answer = httpx.get(f"{url}/models/iris")
        assert answer.json()["runtime"] == "sklearn"
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
        assert "one server process, as iris run on scikit-learn" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_help_prints_usage_and_serves_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--host", "--port", "--store", "--workers", "--log-level"):
        assert flag in done.stdout
    assert "serving" not in done.stderr  # no server line, no log


def test_flags_override_the_environment(trained_store: ModelStore, tmp_path: Path) -> None:
    # The environment names an empty store and another port; the flags win.
    port = _free_port()
    process, url = _start(
        trained_store,
        "uvloop",
        "--port",
        str(port),
        "--store",
        str(trained_store.root),
        store=str(tmp_path),
    )
    try:
        assert url.endswith(f":{port}")
        ok = httpx.post(f"{url}/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
        assert ok.status_code == 200, ok.text
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=30)


def test_invalid_settings_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "SERVEWELL_STORE": str(tmp_path), "SERVEWELL_POOL_SIZE": "none"}
    done = subprocess.run(
        [sys.executable, "-m", "serving"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "invalid settings" in done.stderr
    assert "pool_size" in done.stderr
    assert "Traceback" not in done.stderr


def test_workers_exit_when_the_server_is_killed(trained_store: ModelStore) -> None:
    process, _ = _start(trained_store)
    workers = descendants(process.pid)
    try:
        process.kill()  # no chance to clean up: workers must notice on their own
        process.communicate(timeout=30)
        assert not _wait_gone(workers, 10), "workers outlived a killed server"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def _accepted_after_a_burst(connections: int, iterations: int) -> int:
    """Open ``connections`` while the loop is not running, then let it run ``iterations``
    times; return how many connections the server has by then."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseTransport] = []

    class Count(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    server = await loop.create_server(Count, "127.0.0.1", 0, backlog=connections)
    port = server.sockets[0].getsockname()[1]
    # The kernel completes each handshake; all of them wait in the accept queue.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        for _ in range(iterations):
            await asyncio.sleep(0)
        return len(made)
    finally:
        for client in clients:
            client.close()
        for transport in made:
            transport.close()
        server.close()
        await server.wait_closed()


def test_a_burst_of_connections_is_accepted_at_once() -> None:
    # Plain uvloop (libuv) accepts one connection per loop iteration: under load, when an
    # iteration takes long, a burst of connections would wait seconds in the accept queue.
    # Only servewell's loop is asserted: how plain uvloop accepts is the library's business
    # (a libuv that accepts greedily would not make this loop wrong).
    with asyncio.Runner(loop_factory=GreedyAcceptLoop) as runner:
        assert runner.run(_accepted_after_a_burst(200, 5)) == 200


def _pool_workers(pid: int) -> list[int]:
    """The inference workers among pid's descendants (not multiprocessing's tracker)."""
    found = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def _post_in_background(url: str, result: list[object]) -> threading.Thread:
    def post() -> None:
        try:
            result.append(
                httpx.post(
                    f"{url}/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]}, timeout=60
                )
            )
        except httpx.HTTPError as exc:
            result.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def test_sigterm_stops_accepting_finishes_requests_in_flight_and_exits_0(
    trained_store: ModelStore,
) -> None:
    process, url = _start(trained_store, pool_size="1", inference="pool")
    try:
        everything = descendants(process.pid)
        (worker,) = _pool_workers(process.pid)
        os.kill(worker, signal.SIGSTOP)  # the request below stays in flight until SIGCONT
        result: list[object] = []
        thread = _post_in_background(url, result)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGTERM)  # as a service manager stops a unit
        time.sleep(1.0)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{url}/health/live", timeout=5)
        assert process.poll() is None  # still draining
        os.kill(worker, signal.SIGCONT)
        thread.join(60)
        (response,) = result
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "stopped on SIGTERM" in output
        assert "Traceback" not in output
        assert not _wait_gone(everything, 10), "orphaned processes"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


GRACE_EXIT_S = 12.0
"""Bound on the exit after SIGTERM with a 1 s grace and a stopped worker: the grace, then the
pool's 5 s wait for the worker to stop politely before it is killed, and room for a loaded
box (measured: 6.2 s; ignoring the grace takes the request's 60 s deadline)."""


@pytest.mark.slow  # a server process of its own: kept out of the default run
def test_sigterm_grace_period_is_bounded(trained_store: ModelStore) -> None:
    # The request's own deadline is long: only the grace period may cut it short.
    process, url = _start(
        trained_store,
        pool_size="1",
        inference="pool",
        shutdown_grace_s="1",
        request_timeout_s="60",
    )
    everything = descendants(process.pid)
    (worker,) = _pool_workers(process.pid)
    try:
        os.kill(worker, signal.SIGSTOP)  # a request that would never finish
        result: list[object] = []
        thread = _post_in_background(url, result)
        time.sleep(1.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=GRACE_EXIT_S)
        assert time.monotonic() - signalled < GRACE_EXIT_S
        assert process.returncode == 0, output
        thread.join(60)
        (outcome,) = result  # cut off: a 5xx or a closed connection, but an answer
        if isinstance(outcome, httpx.Response):
            assert outcome.status_code >= 500
        assert not _wait_gone(everything, 10), "orphaned processes"
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for pid in everything:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # a server process of its own: kept out of the default run
def test_a_stuck_worker_dies_with_a_killed_server(trained_store: ModelStore) -> None:
    process, _ = _start(trained_store, pool_size="1", inference="pool")
    everything = descendants(process.pid)
    (worker,) = _pool_workers(process.pid)
    try:
        os.kill(worker, signal.SIGSTOP)  # it could not read the EOF on its pipe
        process.kill()
        process.communicate(timeout=30)
        assert not _wait_gone(everything, 10), "a stuck worker outlived a killed server"
    finally:
        for pid in everything:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("freeze", [True, False])
def test_the_app_built_for_uvicorn_freezes_startup_objects_out_of_the_collector(
    monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    import gc

    from serving.__main__ import create_app

    monkeypatch.setenv("SERVEWELL_GC_FREEZE", str(freeze).lower())
    monkeypatch.setenv("SERVEWELL_METRICS", "false")
    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        create_app()
        assert (gc.get_freeze_count() > 10_000) is freeze
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)  # the rest of the test run keeps Python's own


def test_the_app_built_for_uvicorn_collects_the_young_generation_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from serving.__main__ import create_app

    monkeypatch.setenv("SERVEWELL_GC_YOUNG_THRESHOLD", "1234")
    monkeypatch.setenv("SERVEWELL_METRICS", "false")
    before = gc.get_threshold()
    try:
        create_app()
        assert gc.get_threshold() == (1234, before[1], before[2])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


_STARTED = """
import asyncio, gc, json, sys
from serving.__main__ import create_app

async def main():
    app = create_app()
    built = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        started = gc.get_freeze_count()
        loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"built": built, "started": started, "modules": loaded}))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def started_service(trained_store: ModelStore) -> dict[str, Any]:
    """The service as ``python -m serving`` builds it, through its start-up (models loaded,
    pool started), in a process of its own: what it froze and what it imported."""
    env = {**os.environ, "SERVEWELL_STORE": str(trained_store.root), "SERVEWELL_GRPC_PORT": "0"}
    env |= {"SERVEWELL_POOL_SIZE": "1", "SERVEWELL_CAPTURE": "none", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _STARTED], env=env, cwd=ROOT, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def test_what_loading_the_models_made_is_frozen_too(started_service: dict[str, Any]) -> None:
    # Otherwise every full collection walks each model's objects (100 models: ~23 ms each).
    assert started_service["started"] > started_service["built"] > 0


def test_the_server_process_imports_no_library_it_does_not_use(
    started_service: dict[str, Any],
) -> None:
    """scikit-learn runs in the workers only; SciPy's statistics (~78 MB) when an experiment
    is compared; SQLAlchemy (~23 MB) when capture is on: none at start."""
    assert not {"sklearn", "scipy", "sqlalchemy", "pandas"} & set(started_service["modules"])
