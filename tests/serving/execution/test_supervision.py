"""Faults in the process pool (serving.execution.supervision): dead, hung and crash-looping
workers replaced, their batches retried once, readiness that does not flap; real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.core.errors import WorkerLostError
from serving.execution.pool import InferencePool
from serving.execution.runtime import RuntimePolicy
from serving.http.exception_handlers import serving_error_response
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, quiet_settings, running_server
from tests.serving.execution.waits import answered, until


def test_a_dead_worker_is_replaced(trained_store: ModelStore) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1)
        try:
            await pool.start()
            victim = pool.pids[0]
            os.kill(victim, signal.SIGKILL)
            for _ in range(200):  # the parent notices on the closed pipe
                if pool.restarts:
                    break
                await asyncio.sleep(0.01)
            assert pool.restarts == 1
            result = await answered(
                pool.submit(("iris", 1), np.array([[5.1, 3.5, 1.4, 0.2]]), False)
            )
            assert result.predictions.tolist() == ["setosa"]
            assert pool.up
            assert victim not in pool.pids
            # Replaced, not just survived: a new process, and the pool at full size again.
            assert len(pool.pids) == pool.size == 1
            assert pool.workers_ready == pool.size
        finally:
            pool.close()

    asyncio.run(scenario())


def _big_iris_batch(rows: int = 2_000_000) -> np.ndarray:
    # Big enough that the worker is still busy when the test kills it, and that a retry is
    # still running when the test looks for it every 10 ms: 50 ms or more of copying into
    # shared memory and predicting (50 000 rows took about 2 ms once sent that way).
    return np.tile(np.array([IRIS_ROW]), (rows, 1))


def test_a_batch_on_a_killed_worker_is_retried_and_the_replacement_loads_every_model(
    trained_store: ModelStore,
) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1), ("diabetes", 1)], size=1)
        try:
            await pool.start()
            victim = pool.pids[0]
            rows = _big_iris_batch()
            batch = pool.submit(("iris", 1), rows, False)
            os.kill(victim, signal.SIGKILL)
            result = await answered(batch)  # retried on the replacement, which loaded both models
            assert set(result.predictions.tolist()) == {"setosa"}
            assert len(result.predictions) == len(rows)
            assert pool.retried_batches == 1
            assert pool.restarts == 1
            assert victim not in pool.pids
            assert pool.workers_ready == len(pool.pids) == pool.size
            diabetes = await answered(pool.submit(("diabetes", 1), np.zeros((3, 10)), False))
            assert len(diabetes.predictions) == 3
            assert pool.up
        finally:
            pool.close()

    asyncio.run(scenario())


def test_a_batch_whose_worker_dies_twice_fails_as_retryable_and_the_pool_recovers(
    trained_store: ModelStore,
) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1)
        try:
            await pool.start()
            first = pool.pids[0]
            batch = pool.submit(("iris", 1), _big_iris_batch(), False)
            os.kill(first, signal.SIGKILL)
            # The retry goes to the replacement as soon as it is ready: kill that one too.
            await until(lambda: any(w.batch and w.process.pid != first for w in pool._workers))
            os.kill(pool.pids[0], signal.SIGKILL)
            with pytest.raises(WorkerLostError) as caught:
                await answered(batch)
            assert caught.value.retry_after > 0
            assert pool.lost_batches == 1
            ok = await answered(pool.submit(("iris", 1), np.array([IRIS_ROW]), False))
            assert ok.predictions.tolist() == ["setosa"]
            assert pool.restarts == 2
        finally:
            pool.close()

    asyncio.run(scenario())


def test_a_hung_worker_is_killed_and_its_batch_answered_by_the_replacement(
    trained_store: ModelStore,
) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1, hang_timeout=0.5)
        try:
            await pool.start()
            hung = pool.pids[0]
            os.kill(hung, signal.SIGSTOP)  # alive, but never answers
            result = await answered(pool.submit(("iris", 1), np.array([IRIS_ROW]), False))
            assert result.predictions.tolist() == ["setosa"]
            assert pool.restarts == 1
            assert hung not in pool.pids
            assert _gone(hung)
        finally:
            pool.close()

    asyncio.run(scenario())


def test_an_explained_batch_on_a_hung_or_dead_worker_is_answered_by_the_replacement(
    trained_store: ModelStore,
) -> None:
    """An explained batch runs beside the worker's batches, not as its job: the watchdog
    still sees a worker that hangs on it, and its batch is retried like any other."""
    # On scikit-learn, already imported to predict, the replacement's first explanation takes
    # milliseconds, well within the hang timeout (on ONNX Runtime it would import it first).
    sklearn = RuntimePolicy(prefer_onnx=False)

    async def scenario() -> None:
        pool = InferencePool(
            trained_store.root, [("iris", 1)], size=1, hang_timeout=1.0, policy=sklearn
        )
        try:
            await pool.start()
            hung = pool.pids[0]
            os.kill(hung, signal.SIGSTOP)
            explained = await answered(
                pool.submit(("iris", 1), np.array([IRIS_ROW]), False, explain=True)
            )
            assert explained.predictions.tolist() == ["setosa"]
            assert explained.contributions is not None
            assert pool.restarts == 1
            assert pool.retried_batches == 1
            assert _gone(hung)
            dying = pool.pids[0]
            pending = pool.submit(("iris", 1), np.array([IRIS_ROW]), False, explain=True)
            os.kill(dying, signal.SIGKILL)
            assert (await answered(pending)).contributions is not None
            assert pool.restarts == 2
        finally:
            pool.close()

    asyncio.run(scenario())


def _gone(pid: int) -> bool:
    """No such process, or only its zombie entry."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_replacement_that_dies_while_loading_is_started_again(
    trained_store: ModelStore,
) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1)
        try:
            await pool.start()
            os.kill(pool.pids[0], signal.SIGKILL)
            await until(lambda: pool._workers and not pool._workers[0].ready)
            assert pool.up  # a first replacement loading: batches wait for it
            os.kill(pool._workers[0].process.pid or 0, signal.SIGKILL)
            await until(lambda: pool.restarts == 2)
            # The replacement died too: a crash loop reports down, but is not broken.
            assert (pool.up, pool.broken) == (False, None)
            waiting = pool.submit(("iris", 1), np.array([IRIS_ROW]), False)  # queued
            assert (await answered(waiting)).predictions.tolist() == ["setosa"]
            assert pool.up
        finally:
            pool.close()

    asyncio.run(scenario())


def test_a_replacement_loading_past_the_grace_period_reports_the_pool_down(
    trained_store: ModelStore,
) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1, replacement_grace=0.0)
        try:
            await pool.start()
            os.kill(pool.pids[0], signal.SIGKILL)
            await until(lambda: pool._workers and not pool._workers[0].ready)
            assert (pool.up, pool.replacing) == (False, 1)  # loading longer than 0 s allows
            await until(lambda: pool.workers_ready == 1)
            assert (pool.up, pool.replacing) == (True, 0)
        finally:
            pool.close()

    asyncio.run(scenario())


async def _load_while(url: str, stop: asyncio.Event, statuses: list[int], ready: list[int]) -> None:
    """Concurrent clients (single-row and 1000-row iris requests) and a readiness prober,
    until ``stop`` is set."""
    single = {"rows": [IRIS_ROW]}
    bulk = {"rows": [IRIS_ROW] * 1000}
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def user(i: int) -> None:
            while not stop.is_set():
                response = await client.post("/models/iris/predict", json=bulk if i % 4 else single)
                statuses.append(response.status_code)

        async def prober() -> None:
            while not stop.is_set():
                ready.append((await client.get("/health/ready")).status_code)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(user(i) for i in range(16)), prober())


@pytest.mark.parametrize("size", [1, 2])
def test_sigkill_of_a_worker_under_load_fails_no_request(
    trained_store: ModelStore, size: int
) -> None:
    """With two workers the other keeps serving; with one (the default on a 2-core box) the
    requests wait for its replacement. Either way nothing fails and readiness never drops."""
    settings = quiet_settings(trained_store, inference="pool", pool_size=size)
    with running_server(settings) as server:
        pool = server.app.state.dataplane.executor
        statuses: list[int] = []
        ready: list[int] = []

        async def scenario() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(_load_while(server.url, stop, statuses, ready))
            await until(lambda: len(statuses) > 50)
            victim = pool.pids[0]
            await until(lambda: any(w.batch and w.process.pid == victim for w in pool._workers))
            os.kill(victim, signal.SIGKILL)
            await until(lambda: pool.restarts == 1 and pool.workers_ready == size)
            served = len(statuses)
            await until(lambda: len(statuses) > served + 50)  # and after the rebuild
            stop.set()
            await load

        asyncio.run(scenario())
        assert len(pool.pids) == size
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        assert set(ready) == {200}, {s: ready.count(s) for s in set(ready)}
        with server.client() as client:
            detail = client.get("/health/ready").json()
            assert detail["executor"]["workers_ready"] == size
            assert detail["executor"]["replacing"] == 0
            assert detail["executor"]["restarts"] == 1
            for path, body in [
                ("/models/iris/predict", {"rows": [IRIS_ROW]}),
                ("/models/diabetes/predict", {"rows": [[0.0] * 10]}),
                ("/models/breast_cancer/predict", {"rows": [[1.0] * 30]}),
            ]:
                assert client.post(path, json=body).status_code == 200, path


def test_a_lost_batch_is_a_503_with_retry_after() -> None:
    response = serving_error_response(WorkerLostError("the worker died, twice", 1.5), "test")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert b'"worker_lost"' in response.body
