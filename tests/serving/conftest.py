"""Fixtures for the serving tests: real models trained by the training code into temporary
stores, and a real server (uvicorn + the process pool) on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from serving.__main__ import uvicorn_options
from serving.core.dataplane import DataPlane
from serving.core.loading import build_dataplane
from serving.http.app import create_app
from serving.settings import Settings
from serving.store import MODEL_FILE, ModelStore
from tests.serving.artifacts import flip_a_byte
from training.run import train
from training.spec import shipped_spec

# Small models keep the suite fast; the shapes (features, kinds, classes) are the shipped ones.
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
"""A valid iris row, in feature order."""

SMALL = {"breast_cancer": {"estimator": {"params": {"n_estimators": 10}}}}


def _quiet(_: str) -> None:
    """Echo sink for train()."""


def train_into(root: Path, names: list[str]) -> ModelStore:
    trained_store = ModelStore(root)
    for name in names:
        spec = shipped_spec(name)
        if name in SMALL:
            spec = spec.with_overrides(SMALL[name])
        train(spec, trained_store, echo=_quiet)
    return trained_store


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """Every shipped model, trained once for the session."""
    return train_into(
        tmp_path_factory.mktemp("store"), ["iris", "breast_cancer", "diabetes", "churn"]
    )


@pytest.fixture(scope="session")
def tampered_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """iris is fine; diabetes has one byte of its model file changed after training."""
    trained_store = train_into(tmp_path_factory.mktemp("tampered"), ["iris", "diabetes"])
    flip_a_byte(trained_store.version_path("diabetes", 1) / MODEL_FILE)
    return trained_store


def dataplane_for(settings: Settings) -> DataPlane:
    """A data plane as the app builds it (executor from the settings), not started yet."""
    return build_dataplane(settings)


@dataclass
class RunningServer:
    url: str
    app: Any
    server: uvicorn.Server

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def quiet_settings(trained_store: ModelStore, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"store": trained_store.root, "port": 0, "log_level": "warning"}
    values["grpc_port"] = 0  # off unless a test asks: test servers run side by side
    values.update(overrides)
    return Settings(**values)


def start_server(settings: Settings) -> tuple[RunningServer, threading.Thread]:
    """Run uvicorn with create_app(settings) in a thread; return once it accepts requests."""
    app = create_app(settings)
    config = uvicorn.Config(app, **uvicorn_options(settings))  # as python -m serving runs it
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", app, server), thread


@contextlib.contextmanager
def running_server(settings: Settings) -> Iterator[RunningServer]:
    """The real service, running for the duration of the block, then shut down."""
    running, thread = start_server(settings)
    try:
        yield running
    finally:
        running.server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def server(trained_store: ModelStore) -> Iterator[RunningServer]:
    """The real service over the full trained_store, with the process pool."""
    with running_server(quiet_settings(trained_store, pool_size=2)) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def tampered_server(tampered_store: ModelStore) -> Iterator[RunningServer]:
    with running_server(quiet_settings(tampered_store, pool_size=1)) as running:
        yield running
