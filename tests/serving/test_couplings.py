"""Each third-party coupling (serving/couplings) is on with the tested versions, falls back to
the library's stock behaviour with any other version or when forced, warning once; and the
real server, every coupling forced off, still predicts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket

import httpx
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import couplings
from serving.couplings import loops, sklearn_forest, uvicorn_http
from serving.couplings.uvicorn_http import ConnectionLimits, GuardedHttpToolsProtocol
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.process import python_prints
from tests.serving.process import start_serving as _start

LIMITS = ConnectionLimits(
    header_timeout_s=5, max_header_bytes=8192, max_headers=50, max_connections=10, retry_after_s=1
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(couplings.STOCK_ENV, raising=False)
    monkeypatch.setattr(couplings, "_warned", set())


def _untested(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    coupling = getattr(module, name)
    monkeypatch.setattr(module, name, dataclasses.replace(coupling, tested=frozenset({"0.0.0"})))


def _forest() -> RandomForestClassifier:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(40, 3))
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(rows, rows[:, 0] > 0)


@pytest.mark.parametrize("coupling", couplings.ALL, ids=lambda c: c.name)
def test_every_coupling_is_on_with_the_installed_tested_version(
    coupling: couplings.Coupling,
) -> None:
    assert couplings.installed(coupling.library) in coupling.tested
    assert couplings.enabled(coupling)


def test_an_untested_version_falls_back_with_one_warning_naming_the_coupling(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    coupling = dataclasses.replace(couplings.SKLEARN_FOREST, tested=frozenset({"0.0.0"}))
    with caplog.at_level(logging.WARNING, "servewell"):
        assert not couplings.enabled(coupling)
        assert not couplings.enabled(coupling)
    warnings = [r for r in caplog.records if "sklearn-forest" in r.getMessage()]
    assert len(warnings) == 1
    assert "is not one servewell was tested with" in warnings[0].getMessage()


def test_the_setting_forces_every_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(couplings.STOCK_ENV, "1")
    assert Settings().stock_couplings
    with caplog.at_level(logging.WARNING, "servewell"):
        assert not any(couplings.enabled(c) for c in couplings.ALL)
    for coupling in couplings.ALL:
        assert f"coupling {coupling.name}" in caplog.text
    assert couplings.enabled(couplings.UVICORN_HTTP, stock=False)  # settings win


def test_uvicorn_http_stock_protocol_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    guarded = uvicorn_http.http_protocol(LIMITS)
    assert guarded.func is GuardedHttpToolsProtocol
    assert uvicorn_http.http_protocol(LIMITS, stock=True) is HttpToolsProtocol
    _untested(monkeypatch, uvicorn_http, "UVICORN_HTTP")
    assert uvicorn_http.http_protocol(LIMITS) is HttpToolsProtocol


def test_uvloop_accept_plain_uvloop_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loops.loop_setting("uvloop") == "serving.couplings.uvloop_accept:GreedyAcceptLoop"
    assert loops.loop_setting("uvloop", stock=True) == "uvloop"
    assert loops.loop_setting("uvloop-libuv-accept") == "uvloop"
    assert loops.loop_setting("asyncio") == "asyncio"
    _untested(monkeypatch, loops, "UVLOOP_ACCEPT")
    assert loops.loop_setting("uvloop") == "uvloop"


def test_the_greedy_accept_loop_serves_uvicorn_and_shares_a_port_when_asked() -> None:
    from serving.couplings.uvloop_accept import GreedyAcceptLoop, _Listener

    async def two_listeners() -> int:
        loop = asyncio.get_running_loop()
        # As uvicorn calls it (ssl=None): still the greedy listener.
        first = await loop.create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=None, backlog=100, reuse_port=True
        )
        assert isinstance(first, _Listener)
        port = int(first.sockets[0].getsockname()[1])
        second = await loop.create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        with pytest.raises(OSError, match="in use"):  # not shared unless asked
            await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        first.close()
        second.close()
        return port

    loop = GreedyAcceptLoop()
    try:
        assert loop.run_until_complete(two_listeners()) > 0
    finally:
        loop.close()


def test_server_processes_given_one_bound_socket_each_listen_on_their_own() -> None:
    from serving.couplings.uvloop_accept import GreedyAcceptLoop, _Listener

    async def two_processes() -> list[int]:
        loop = asyncio.get_running_loop()
        accepted: dict[int, int] = {}

        def counting(i: int) -> type[asyncio.Protocol]:
            class Count(asyncio.Protocol):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    accepted[i] = accepted.get(i, 0) + 1

            return Count

        # As uvicorn's server processes call it: with the socket their supervisor bound.
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))
        servers = [
            await loop.create_server(counting(i), sock=bound, ssl=None, backlog=2048)
            for i in range(2)
        ]
        assert all(isinstance(s, _Listener) for s in servers)
        assert {s.sockets[0].getsockname() for s in servers} == {bound.getsockname()}
        assert bound not in {s.sockets[0] for s in servers}
        clients = [socket.create_connection(bound.getsockname()) for _ in range(40)]
        for _ in range(100):
            if sum(accepted.values()) == len(clients):
                break
            await asyncio.sleep(0.02)
        for server in servers:
            server.close()
        for c in [*clients, bound]:
            c.close()
        return [accepted.get(i, 0) for i in range(2)]

    loop = GreedyAcceptLoop()
    try:
        split = loop.run_until_complete(two_processes())
    finally:
        loop.close()
    # The kernel spreads connections over the listening sockets (by a hash of each address
    # pair): 40 all on one of two has a chance of 2 in 2**40.
    assert sum(split) == 40
    assert min(split) > 0


def test_choosing_a_loop_imports_no_uvloop() -> None:
    code = (
        "import sys; from serving.__main__ import uvicorn_options; from serving.settings import"
        " Settings; uvicorn_options(Settings(loop='asyncio')); print('uvloop' in sys.modules)"
    )
    assert python_prints(code) == "False"


def test_sklearn_forest_two_passes_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    forest = _forest()
    assert sklearn_forest.votes_by_probabilities(forest)
    monkeypatch.setenv(couplings.STOCK_ENV, "true")
    assert not sklearn_forest.votes_by_probabilities(forest)
    monkeypatch.delenv(couplings.STOCK_ENV)
    _untested(monkeypatch, sklearn_forest, "SKLEARN_FOREST")
    assert not sklearn_forest.votes_by_probabilities(forest)


def test_the_real_server_with_every_coupling_forced_off_predicts(
    trained_store: ModelStore,
) -> None:
    process, url = _start(trained_store, "uvloop", stock_couplings="1")
    try:
        ok = httpx.post(f"{url}/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["predictions"] == ["setosa"]
        forest = httpx.post(
            f"{url}/models/breast_cancer/predict",
            json={"rows": [[0.0] * 30]},
        )
        assert forest.status_code == 200, forest.text
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        for name in ("uvicorn-http", "uvloop-accept"):
            assert f"coupling {name}" in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
