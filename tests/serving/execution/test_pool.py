"""The process pool with real worker processes and really trained models."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import uvloop

from serving.core.errors import InferenceError, NotReadyError, WorkerLostError
from serving.execution import shared_arrays
from serving.execution.pool import InferencePool
from serving.http.exception_handlers import serving_error_response
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, quiet_settings, running_server
from tests.serving.regions import shared_regions
from training.onnx_export import PROBA_TOLERANCE

T = TypeVar("T")
ANSWER_S = 60.0
"""Longest wait for a batch's answer: a replacement worker starts in seconds even on a busy
box, and a pool that lost every worker without replacing it must fail a test, not hang it."""


async def _answer(pending: Awaitable[T]) -> T:
    return await asyncio.wait_for(pending, ANSWER_S)


def test_workers_answer_like_the_model_in_process(trained_store: ModelStore) -> None:
    _, iris = trained_store.load_model("iris", 1)
    rows = np.random.default_rng(3).uniform(0.1, 7.9, size=(64, 4))

    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1), ("diabetes", 1)], size=2)
        try:
            await pool.start()
            assert pool.up
            assert len(set(pool.pids)) == 2
            assert os.getpid() not in pool.pids
            results = await _answer(
                asyncio.gather(
                    *(pool.submit(("iris", 1), rows[i : i + 8], True) for i in range(0, 64, 8))
                )
            )
        finally:
            pool.close()
        predictions = np.concatenate([r.predictions for r in results])
        probabilities = np.concatenate(
            [r.probabilities for r in results if r.probabilities is not None]
        )
        assert predictions.tolist() == iris.predict(rows).tolist()
        assert np.allclose(probabilities, iris.predict_proba(rows), rtol=0, atol=PROBA_TOLERANCE)

    asyncio.run(scenario())


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
            result = await _answer(
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


def test_estimator_errors_come_back_as_inference_errors(trained_store: ModelStore) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1)
        try:
            await pool.start()
            with pytest.raises(InferenceError):
                await _answer(pool.submit(("iris", 1), np.zeros((1, 3)), False))  # wrong width
            ok = await _answer(pool.submit(("iris", 1), np.array([[5.1, 3.5, 1.4, 0.2]]), False))
            assert ok.predictions.tolist() == ["setosa"]
        finally:
            pool.close()

    asyncio.run(scenario())


def test_models_that_fail_to_load_are_reported(trained_store: ModelStore) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1), ("iris", 99)], size=1)
        try:
            await pool.start()
            assert ("iris", 99) in pool.failed
            assert ("iris", 1) not in pool.failed
        finally:
            pool.close()

    asyncio.run(scenario())


def test_close_stops_every_worker(trained_store: ModelStore) -> None:
    async def scenario() -> list[int]:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=2)
        await pool.start()
        pids = pool.pids
        pool.close()
        assert not pool.up
        with pytest.raises(NotReadyError):
            pool.submit(("iris", 1), np.zeros((1, 4)), False)
        return pids

    for pid in asyncio.run(scenario()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_large_batches_cross_the_pipe_under_both_loops(trained_store: ModelStore, run: Any) -> None:
    # uvloop makes watched pipes non-blocking; megabyte messages must still arrive whole.
    _, cancer = trained_store.load_model("breast_cancer", 1)
    rows = np.random.default_rng(5).uniform(0, 100, size=(10_000, 30))

    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("breast_cancer", 1)], size=1)
        try:
            await pool.start()
            result = await _answer(pool.submit(("breast_cancer", 1), rows, True))
        finally:
            pool.close()
        assert np.array_equal(result.predictions, cancer.predict(rows))
        assert result.probabilities is not None
        assert np.allclose(
            result.probabilities, cancer.predict_proba(rows), rtol=0, atol=PROBA_TOLERANCE
        )

    run(scenario())


@pytest.mark.skipif(not shared_arrays.supported(), reason="no memfd_create on this platform")
def test_large_batches_and_answers_go_through_shared_memory_and_leave_nothing_open(
    trained_store: ModelStore,
) -> None:
    # The event loop must not write megabytes into the worker's socket (it blocks meanwhile):
    # big batches, and the answers to them, travel through each side's shared region.
    _, iris = trained_store.load_model("iris", 1)
    _, diabetes = trained_store.load_model("diabetes", 1)
    rng = np.random.default_rng(8)

    async def scenario() -> None:
        before = shared_regions()  # the session's server may hold some
        pool = InferencePool(trained_store.root, [("iris", 1), ("diabetes", 1)], size=1)
        try:
            await pool.start()
            worker = pool._workers[0]
            fds = []
            for rows in (10_000, 12_000, 100_000, 3):
                batch = rng.uniform(0.1, 7.9, size=(rows, 4))
                result = await _answer(pool.submit(("iris", 1), batch, True))
                assert result.predictions.tolist() == iris.predict(batch).tolist()
                assert result.probabilities is not None
                assert np.allclose(
                    result.probabilities, iris.predict_proba(batch), rtol=0, atol=PROBA_TOLERANCE
                )
                values = rng.uniform(-0.1, 0.1, size=(rows, 10))
                answer = await _answer(pool.submit(("diabetes", 1), values, False))
                assert np.allclose(answer.predictions, diabetes.predict(values), rtol=1e-9)
                fds.append((len(shared_regions() - before), len(shared_regions(pool.pids[0]))))
            # 1 MiB for up to 12 000 rows of either model, then 4 MiB and 8 MiB for 100 000
            # rows of iris and of diabetes; 3 rows are pickled.
            assert worker.outbox.regions == 3
            # A replaced region leaves no descriptor open, in the server or in the worker: each
            # keeps its own region and its peer's (mmap holds a descriptor while mapped).
            assert set(fds) == {(2, 2)}
        finally:
            pool.close()
        # Closing unmaps them at once (the garbage collector might take its time).
        assert shared_regions() - before == set()

    asyncio.run(scenario())


def test_models_load_and_unload_in_running_workers_and_restarts_keep_them(
    trained_store: ModelStore,
) -> None:
    row = np.array([[5.1, 3.5, 1.4, 0.2]])

    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("diabetes", 1)], size=2)
        try:
            await pool.start()
            with pytest.raises(InferenceError):  # not loaded yet: the worker says so
                await _answer(pool.submit(("iris", 1), row, False))
            assert await pool.load_model(("iris", 1)) in {"onnx", "sklearn"}
            results = await _answer(
                asyncio.gather(*(pool.submit(("iris", 1), row, False) for _ in range(8)))
            )
            assert {r.predictions.tolist()[0] for r in results} == {"setosa"}
            # A worker started after the load (here: after a crash) loads the current set.
            victim = pool.pids[0]
            os.kill(victim, signal.SIGKILL)
            # Both workers again (one serving alone would keep the pool up): a replacement.
            await _until(lambda: pool.restarts == 1 and pool.workers_ready == pool.size)
            assert victim not in pool.pids
            assert len(pool.pids) == pool.size
            results = await _answer(
                asyncio.gather(*(pool.submit(("iris", 1), row, False) for _ in range(8)))
            )
            assert {r.predictions.tolist()[0] for r in results} == {"setosa"}
            with pytest.raises(InferenceError, match="ModelNotFoundError"):
                await pool.load_model(("iris", 99))
            await pool.unload_model(("iris", 1))
            with pytest.raises(InferenceError):
                await _answer(pool.submit(("iris", 1), row, False))
            assert pool.up
        finally:
            pool.close()

    asyncio.run(scenario())


async def _until(condition: Any, seconds: float = 60.0) -> None:
    """Poll a condition from inside the event loop (the pool needs the loop to run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


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
            result = await _answer(batch)  # retried on the replacement, which loaded both models
            assert set(result.predictions.tolist()) == {"setosa"}
            assert len(result.predictions) == len(rows)
            assert pool.retried_batches == 1
            assert pool.restarts == 1
            assert victim not in pool.pids
            assert pool.workers_ready == len(pool.pids) == pool.size
            diabetes = await _answer(pool.submit(("diabetes", 1), np.zeros((3, 10)), False))
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
            await _until(lambda: any(w.batch and w.process.pid != first for w in pool._workers))
            os.kill(pool.pids[0], signal.SIGKILL)
            with pytest.raises(WorkerLostError) as caught:
                await _answer(batch)
            assert caught.value.retry_after > 0
            assert pool.lost_batches == 1
            ok = await _answer(pool.submit(("iris", 1), np.array([IRIS_ROW]), False))
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
            result = await _answer(pool.submit(("iris", 1), np.array([IRIS_ROW]), False))
            assert result.predictions.tolist() == ["setosa"]
            assert pool.restarts == 1
            assert hung not in pool.pids
            assert _gone(hung)
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
            await _until(lambda: pool._workers and not pool._workers[0].ready)
            assert pool.up  # a first replacement loading: batches wait for it
            os.kill(pool._workers[0].process.pid or 0, signal.SIGKILL)
            await _until(lambda: pool.restarts == 2)
            # The replacement died too: a crash loop reports down, but is not broken.
            assert (pool.up, pool.broken) == (False, None)
            waiting = pool.submit(("iris", 1), np.array([IRIS_ROW]), False)  # queued
            assert (await _answer(waiting)).predictions.tolist() == ["setosa"]
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
            await _until(lambda: pool._workers and not pool._workers[0].ready)
            assert (pool.up, pool.replacing) == (False, 1)  # loading longer than 0 s allows
            await _until(lambda: pool.workers_ready == 1)
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
    settings = quiet_settings(trained_store, pool_size=size)
    with running_server(settings) as server:
        pool = server.app.state.dataplane.executor
        statuses: list[int] = []
        ready: list[int] = []

        async def scenario() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(_load_while(server.url, stop, statuses, ready))
            await _until(lambda: len(statuses) > 50)
            victim = pool.pids[0]
            await _until(lambda: any(w.batch and w.process.pid == victim for w in pool._workers))
            os.kill(victim, signal.SIGKILL)
            await _until(lambda: pool.restarts == 1 and pool.workers_ready == size)
            served = len(statuses)
            await _until(lambda: len(statuses) > served + 50)  # and after the rebuild
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


def test_workers_give_scikit_learn_the_thread_budget_of_onnx_runtime(tmp_path: Path) -> None:
    """In a worker, a scikit-learn model fitted with n_jobs=-1 predicts with the policy's
    threads, and numpy's BLAS is limited to as many (the model reports both)."""
    from serving.execution.runtime import RuntimePolicy
    from training.run import train
    from training.spec import shipped_spec

    store = ModelStore(tmp_path)
    spec = shipped_spec("diabetes").with_overrides(
        {
            "name": "threads",
            "estimator": {"class": "tests.training.custom_estimators.ThreadReportingRidge"},
        }
    )
    train(spec, store, echo=lambda _: None)
    rows = np.zeros((3, len(store.manifest("threads", 1).features)))

    async def scenario() -> list[float]:
        policy = RuntimePolicy(onnx_threads=1)
        pool = InferencePool(store.root, [("threads", 1)], size=1, policy=policy)
        try:
            await pool.start()
            assert pool.runtimes[("threads", 1)] == "sklearn"
            result = await _answer(pool.submit(("threads", 1), rows, False))
        finally:
            pool.close()
        return list(result.predictions.tolist())

    # n_jobs 1 (10 x 1) and one BLAS thread.
    assert asyncio.run(scenario()) == [11.0, 11.0, 11.0]
