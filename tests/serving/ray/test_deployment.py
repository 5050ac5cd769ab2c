"""The app as Ray Serve replicas: options, the replica header, and (with the ``ray`` extra) a
real local Ray instance with two replicas behind Ray's proxy on loopback."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from pydantic import ValidationError

from serving.ray.deployment import REPLICA_HEADER, RayOptions, replica_app
from serving.ray.local import DEFAULT_CONFIG, local_config
from serving.store import ModelStore
from tests.serving.artifacts import publish_copy
from tests.serving.conftest import train_into
from training.onnx_export import generated_rows

ROOT = Path(__file__).resolve().parents[3]
HEADER = REPLICA_HEADER.decode()

# -- options (no Ray needed) -------------------------------------------------------------------


def test_options_default_to_two_inline_replicas_with_an_absolute_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = RayOptions(settings={"store": "models", "max_batch_rows": 64})
    settings = options.replica_settings()
    assert settings == {
        "inference": "inline",
        "grpc_port": 0,
        "store": str(tmp_path / "models"),
        "max_batch_rows": 64,
    }
    assert options.deployment_options() == {
        "ray_actor_options": {"num_cpus": 1.0},
        "max_ongoing_requests": 256,
        "num_replicas": 2,
    }


def test_autoscaling_replaces_the_fixed_replica_count() -> None:
    options = RayOptions.model_validate(
        {"autoscaling": {"min_replicas": 1, "max_replicas": 3}, "num_cpus": 0.5}
    )
    deployment = options.deployment_options()
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 32.0,
    }
    assert deployment["ray_actor_options"] == {"num_cpus": 0.5}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"settings": {"stroe": "models"}}, "unknown servewell settings ['stroe']"),
        ({"autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "min_replicas must not"),
        ({"num_cpus": 0}, "greater than 0"),
        ({"replicas": 2}, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_before_deploying(args: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        RayOptions.model_validate(args)


def test_bad_setting_values_are_refused_before_deploying() -> None:
    with pytest.raises(ValidationError, match="pool_size"):
        RayOptions(settings={"pool_size": 0}).replica_settings()


def test_the_shipped_config_builds_valid_options() -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    (app,) = config["applications"]
    assert app["import_path"] == "serving.ray.deployment:build"
    assert config["http_options"]["host"] == "127.0.0.1"
    options = RayOptions.model_validate(app["args"])
    assert options.num_replicas == 2
    local = local_config(config, Path("some/store"), 9999)
    assert local["http_options"] == {"host": "127.0.0.1", "port": 9999}
    assert local["applications"][0]["args"]["settings"]["store"] == str(
        (Path.cwd() / "some/store").resolve()
    )


# -- the replica app in process (no Ray needed) -----------------------------------------------


def test_every_response_names_the_replica(tmp_path: Path) -> None:
    store = train_into(tmp_path, ["iris"])
    app = replica_app({"store": str(store.root), "inference": "inline"}, "replica-7")
    _, model = store.load_model("iris", 1)
    row = [5.1, 3.5, 1.4, 0.2]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the server exited"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        fast = client.post("/models/iris/predict", json={"rows": [row]})
        routed = client.post("/models/iris/versions/1/predict", json={"rows": [row]})
        ready = client.get("/health/ready")
        missing = client.post("/models/nope/predict", json={"rows": [row]})
        invalid = client.post("/models/iris/predict", content=b"{")
        client.close()
    finally:
        server.should_exit = True
        thread.join(30)
    for response in (fast, routed, ready, missing, invalid):
        assert response.headers[HEADER] == "replica-7"
    assert fast.status_code == routed.status_code == ready.status_code == 200
    assert fast.json()["predictions"] == model.predict([row]).tolist()
    assert missing.status_code == 404
    assert invalid.status_code == 400


# -- a real local Ray instance ------------------------------------------------------------------

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="needs the ray extra: `make test-ray` installs it and runs this test",
)


def _processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine (ps): pid -> (parent pid, command line)."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, *args = line.split(None, 2)
        table[int(pid)] = (int(ppid), args[0] if args else "")
    return table


def _descendants(root: int) -> dict[int, str]:
    table = _processes()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, args) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = args
                frontier.append(pid)
    return found


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-4000:]


@contextlib.contextmanager
def _ray_serve(
    config: dict[str, Any], store: Path, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``python -m serving.ray.local`` with ``config``; yields (url, launcher process, Ray's
    temp dir) once ready, and on exit interrupts the launcher and waits for it."""
    port = _free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-t-", dir="/tmp"))  # short: unix socket paths
    config_path = log.with_suffix(".yaml")
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    argv = [sys.executable, "-m", "serving.ray.local", "--config", str(config_path)]
    argv += ["--store", str(store), "--port", str(port), "--num-cpus", "2"]
    argv += ["--temp-dir", str(temp_dir)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"ray_local exited:\n{_log_tail(log)}"
            assert time.monotonic() < deadline, f"not ready in 300 s:\n{_log_tail(log)}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield url, process, temp_dir
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                pytest.fail(f"ray_local did not stop on SIGINT:\n{_log_tail(log)}")
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _rows(store: ModelStore, name: str, n: int) -> list[list[Any]]:
    frame = generated_rows(store.manifest(name, 1).features, n, seed=7)
    return [list(row) for row in frame.itertuples(index=False)]


@pytest.mark.ray
@needs_ray
@pytest.mark.timeout(900)  # Ray alone may take up to 300 s to come up on a busy box
def test_two_ray_replicas_serve_the_models_and_follow_the_production_pointer(
    tmp_path: Path,
) -> None:
    store = train_into(tmp_path / "store", ["iris", "breast_cancer"])
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    args = config["applications"][0]["args"]
    assert args["num_replicas"] == 2
    args["settings"]["poll_interval_s"] = 0.5
    models = {name: store.load_model(name, 1)[1] for name in ("iris", "breast_cancer")}
    rows = {name: _rows(store, name, 30) for name in models}
    log = tmp_path / "ray_local.log"

    with _ray_serve(config, store.root, log) as (url, launcher, temp_dir):
        running = _descendants(launcher.pid)
        assert any("ServeReplica" in args for args in running.values()), running

        def predict(job: tuple[str, list[Any]]) -> httpx.Response:
            name, row = job
            return httpx.post(f"{url}/models/{name}/predict", json={"rows": [row]}, timeout=30)

        jobs = [(name, row) for name in models for row in rows[name]]
        with ThreadPoolExecutor(8) as threads:
            responses = list(threads.map(predict, jobs))
        replicas: set[str] = set()
        for (name, row), response in zip(jobs, responses, strict=True):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["version"] == 1
            assert body["predictions"] == models[name].predict([row]).tolist(), (name, row)
            replicas.add(response.headers[HEADER])
        assert len(replicas) == 2, replicas

        # Hot swap: publish v2 and promote it in the store; every replica's lifecycle polls
        # the pointer, so every replica must come to answer with v2 on its own.
        new = publish_copy(store, "iris", store, "iris", 1)
        store.promote("iris", new)
        swapped: set[str] = set()
        deadline = time.monotonic() + 60
        row = rows["iris"][0]
        while swapped != replicas:
            assert time.monotonic() < deadline, f"replicas on v{new}: {swapped} of {replicas}"
            response = predict(("iris", row))
            assert response.status_code == 200, response.text
            assert response.json()["predictions"] == models["iris"].predict([row]).tolist()
            if response.json()["version"] == new:
                swapped.add(response.headers[HEADER])
            time.sleep(0.05)

    assert launcher.returncode == 0, _log_tail(log)
    deadline = time.monotonic() + 30
    while True:
        alive = {
            pid: args
            for pid, (_, args) in _processes().items()
            if running.get(pid) == args or str(temp_dir) in args
        }
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not alive, f"left behind: {alive}"


@pytest.mark.ray
@needs_ray
def test_ray_accepts_the_deployment_options() -> None:
    from serving.ray.deployment import build

    with warnings.catch_warnings():  # ray's own deprecation warnings on import
        warnings.simplefilter("ignore")
        import ray.serve  # noqa: F401

    app = build(
        {
            "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 16},
            "num_cpus": 0.5,
            "settings": {"store": "models", "max_batch_delay_ms": 2.0},
        }
    )
    deployment: Any = app._bound_deployment  # typed only when ray is installed
    config = deployment._deployment_config
    assert deployment.name == "servewell"
    assert config.autoscaling_config.min_replicas == 1
    assert config.autoscaling_config.max_replicas == 3
    assert config.autoscaling_config.target_ongoing_requests == 16
    assert config.max_ongoing_requests == 256
    assert deployment.ray_actor_options["num_cpus"] == 0.5
