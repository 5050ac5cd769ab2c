"""``python -m serving`` with two server processes: /metrics adds both up whichever answers,
and both write JSON access lines carrying the request ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.store import ModelStore
from tests.serving.artifacts import publish_copy, set_production
from tests.serving.observe.test_metrics import IRIS, PREDICT, ROOT, Samples, scrape, value
from tests.serving.process import free_port as _free_port


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def _two_processes(store: ModelStore, stderr_path: Path, grpc_port: int) -> Iterator[str]:
    """The service's URL, two server processes behind it, logging JSON to ``stderr_path``."""
    port = _free_port()
    env = {
        **os.environ,
        "SERVEWELL_STORE": str(store.root),
        "SERVEWELL_PORT": str(port),
        "SERVEWELL_GRPC_PORT": str(grpc_port),
        "SERVEWELL_WORKERS": "2",
        "SERVEWELL_POOL_SIZE": "1",
        "SERVEWELL_POLL_INTERVAL_S": "0",
        "SERVEWELL_LOG_LEVEL": "info",
        "SERVEWELL_LOG_FORMAT": "json",
        "SERVEWELL_ACCESS_LOG": "true",
    }
    env.pop("SERVEWELL_METRICS_DIR", None)
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: _ready(url), 120)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _assert_json_access_lines(stderr_path: Path, ids: list[str]) -> None:
    lines = stderr_path.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    access = {e["request_id"]: e for e in entries if e["logger"] == "servewell.access"}
    for request_id in ids:
        entry = access[request_id]
        assert entry["status"] == 200
        assert entry["model"] == "iris"
        assert entry["version"] == 1
        assert entry["rows"] == 1
        assert entry["latency_ms"] > 0
    pids = {e["message"] for e in entries if e["message"].startswith("Started server process")}
    assert len(pids) == 2


def test_two_server_processes_add_up_and_log_json_lines_with_request_ids(
    trained_store: ModelStore, tmp_path: Path
):
    store = ModelStore(tmp_path / "store")  # iris alone: each process loads it quickly
    set_production(store, "iris", publish_copy(store, "iris", trained_store, "iris", 1))
    stderr_path = tmp_path / "stderr.log"
    ids = [f"two-workers-{i}" for i in range(20)]
    grpc_port = _free_port()
    with _two_processes(store, stderr_path, grpc_port) as url:
        for request_id in ids:
            # A new connection each time: the kernel spreads them over both processes.
            response = httpx.post(
                f"{url}/models/iris/predict",
                json={"instances": [IRIS]},
                headers={"x-request-id": request_id},
            )
            assert response.status_code == 200
            assert response.headers["x-request-id"] == request_id
        labels = {"model": "iris", "version": "1", "endpoint": PREDICT, "status": "200"}
        scrapes: list[Samples] = []

        def settled() -> bool:
            with httpx.Client(base_url=url, timeout=10) as fresh:
                scrapes.append(scrape(fresh))
            return value(scrapes[-1], "servewell_requests_total", **labels) == 20

        _wait(settled)  # other processes' counts arrive within a second
        for _ in range(4):  # whichever process answers the scrape, the total is the same
            assert settled()
        last = scrapes[-1]
        assert value(last, "servewell_inference_workers") == 2  # one pool worker per process
        iris = {"model": "iris", "version": "1"}
        assert value(last, "servewell_batch_rows_sum", **iris) == 20
        assert value(last, "servewell_input_rows_checked_total", model="iris") == 20
        info = [v for (n, ls), v in last.items() if n == "servewell_model_info"]
        assert info == [1]  # one served version, whichever process reports it
        for _ in range(10):  # both processes serve the gRPC port too, a channel each time
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
    _assert_json_access_lines(stderr_path, ids)
    assert "cannot serve gRPC" not in stderr_path.read_text(encoding="utf-8")
