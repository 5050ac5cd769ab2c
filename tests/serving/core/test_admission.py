"""Bounded queues and deadlines: in the batcher alone, and through the real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from serving.core.admission import admit, deadline_in, within
from serving.core.batcher import MicroBatcher, Slots
from serving.core.errors import DeadlineExceededError, OverloadedError
from serving.execution.runtime import FloatArray, Prediction
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server


class _Held:
    """An executor whose batches finish only when the test says so."""

    def __init__(self) -> None:
        self.batches: list[asyncio.Future[Prediction]] = []

    def run(self, rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self.batches.append(future)
        return future


def test_a_full_queue_sheds_at_once_but_a_lone_request_always_enters() -> None:
    async def scenario() -> None:
        held = _Held()
        batcher = MicroBatcher(held.run, Slots(1), max_rows=100, max_delay=0.0)
        big = np.zeros((50, 2))
        admit(batcher, 50, max_queue_rows=10, retry_after=1.0)  # empty queue: admitted
        batcher.submit(big, False)  # sent at once: not queued
        batcher.submit(np.zeros((8, 2)), False)  # queued behind it
        admit(batcher, 2, max_queue_rows=10, retry_after=1.0)
        with pytest.raises(OverloadedError) as caught:
            admit(batcher, 3, max_queue_rows=10, retry_after=2.5)
        assert caught.value.retry_after == 2.5

    asyncio.run(scenario())


def test_a_deadline_cancels_the_wait_and_withdraws_unsent_rows() -> None:
    async def scenario() -> None:
        held = _Held()
        batcher = MicroBatcher(held.run, Slots(1), max_rows=100, max_delay=0.0)
        batcher.submit(np.zeros((1, 2)), False)  # holds the only slot
        late = batcher.submit(np.zeros((4, 2)), False)
        with pytest.raises(DeadlineExceededError, match=r"0\.05 s"):
            await within(late, deadline_in(0.05))
        assert batcher.queued_rows == 0
        assert batcher.withdrawn == 1
        with pytest.raises(DeadlineExceededError):  # already past: no wait at all
            await within(batcher.submit(np.zeros((1, 2)), False), deadline_in(-1))
        assert len(held.batches) == 1

    asyncio.run(scenario())


@contextlib.contextmanager
def _stalled_server(
    trained_store: ModelStore, timeout_s: float
) -> Iterator[tuple[RunningServer, int]]:
    """A real server whose only pool worker is stopped (SIGSTOP): nothing gets done and work
    piles up in the queue (max 5 rows) until the block ends and the worker resumes."""
    settings = quiet_settings(
        trained_store,
        inference="pool",
        pool_size=1,
        max_queue_rows=5,
        request_timeout_s=timeout_s,
    )
    with running_server(settings) as server:
        worker = server.app.state.dataplane.executor.pids[0]
        os.kill(worker, signal.SIGSTOP)
        try:
            yield server, worker
        finally:
            os.kill(worker, signal.SIGCONT)


async def _one_sent_one_queued(
    client: httpx.AsyncClient,
) -> tuple[asyncio.Future[httpx.Response], asyncio.Future[httpx.Response]]:
    """A 1-row request sent to the stopped worker, then a 4-row one waiting in the queue."""
    first = asyncio.ensure_future(client.post("/models/iris/predict", json={"rows": [IRIS_ROW]}))
    await asyncio.sleep(0.3)
    queued = asyncio.ensure_future(
        client.post("/models/iris/predict", json={"rows": [IRIS_ROW] * 4})
    )
    await asyncio.sleep(0.3)
    return first, queued


def test_over_http_full_queues_are_503_and_deadlines_504(trained_store: ModelStore) -> None:
    with _stalled_server(trained_store, timeout_s=1.0) as (server, worker):

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                first, queued = await _one_sent_one_queued(client)
                shed = await client.post("/models/iris/predict", json={"rows": [IRIS_ROW] * 2})
                short = await client.post(
                    "/models/iris/predict",
                    json={"rows": [IRIS_ROW]},
                    headers={"X-Request-Timeout": "0.2"},
                )
                bad = await client.post(
                    "/models/iris/predict",
                    json={"rows": [IRIS_ROW]},
                    headers={"X-Request-Timeout": "soon"},
                )
                return [await first, await queued, shed, short, bad]

        first, queued, shed, short, bad = asyncio.run(scenario())
        os.kill(worker, signal.SIGCONT)  # resumed: the assertions below see it working again
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["error"]["type"] == "overloaded"
        assert short.status_code == 504
        assert short.json()["error"]["type"] == "deadline_exceeded"
        assert queued.status_code == 504  # its rows were never sent: withdrawn
        assert first.status_code == 504  # already on the worker: answered 504, result dropped
        assert bad.status_code == 400
        assert bad.json()["error"]["details"][0]["loc"] == ["header", "x-request-timeout"]
        batcher = server.app.state.dataplane.resolve("iris").batcher
        assert batcher.withdrawn >= 2
        assert batcher.queued_rows == 0
        with server.client() as client:  # the worker resumes: later requests are served
            ok = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
            assert ok.status_code == 200


def test_predict_bodies_beyond_the_in_flight_budget_are_shed_before_they_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from starlette.types import Message, Receive, Scope, Send

    from serving.http import edge as edge_module
    from serving.http.edge import Edge
    from serving.observe.observability import Observability
    from serving.settings import Settings

    release = asyncio.Event()
    reads = 0

    async def answer(*args: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        await release.wait()  # the admitted request holds its bytes until answered
        return b"{}", []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the edge answers prediction paths")

    monkeypatch.setattr(edge_module, "answer", answer)
    settings = Settings(max_inflight_body_bytes=100, retry_after_s=3, metrics=False)
    edge = Edge(settings, Observability(settings)).around(app)
    served = SimpleNamespace(batcher=None, manifest=SimpleNamespace(name="iris", version=1))
    edge.predict.paths = {"/models/iris/predict": served}  # type: ignore[dict-item]
    edge.predict.codec = object()  # type: ignore[assignment]
    edge.predict.dataplane = SimpleNamespace(registry=SimpleNamespace(routes={}))  # type: ignore[assignment]

    async def call(length: int) -> list[Message]:
        sent: list[Message] = []
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/models/iris/predict",
            "headers": [(b"content-length", str(length).encode())],
        }

        async def receive() -> Message:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"x" * length, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await edge(scope, receive, send)
        return sent

    async def scenario() -> None:
        alone = asyncio.ensure_future(call(500))  # over the budget, but alone: admitted
        await asyncio.sleep(0.01)
        shed = await call(10)
        assert shed[0]["status"] == 503
        assert (b"retry-after", b"3") in shed[0]["headers"]
        assert reads == 1  # the shed body was never read
        release.set()
        assert (await alone)[0]["status"] == 200
        assert edge.shedder.inflight_bytes == 0
        assert (await call(10))[0]["status"] == 200

    asyncio.run(scenario())


def test_over_http_a_full_queue_sheds_before_the_body_is_read(trained_store: ModelStore) -> None:
    with _stalled_server(trained_store, timeout_s=30) as (server, worker):

        async def scenario() -> tuple[bytes, list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                # The queued request's body teaches the edge iris's bytes per row.
                first, queued = await _one_sent_one_queued(client)
                # Headers of a 10-row request, and no body: it is shed on its headers.
                # Had the edge waited for the body, the answer would be a 408, 30 s later.
                port = int(server.url.rsplit(":", 1)[1])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                length = len(json.dumps({"rows": [IRIS_ROW] * 10}))
                writer.write(
                    b"POST /models/iris/predict HTTP/1.1\r\nhost: t\r\n"
                    b"content-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % length
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                writer.close()
                os.kill(worker, signal.SIGCONT)
                return head, [await first, await queued]

        head, done = asyncio.run(scenario())
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"retry-after: 1" in head.lower()
        assert [r.status_code for r in done] == [200, 200]
        assert server.app.edge.shedder.shed_on_queue == 1
