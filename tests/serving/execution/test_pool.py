"""The process pool with real worker processes and really trained models: answers, load and
unload, shared memory, close. Faults (deaths, hangs, replacements) are test_supervision.py."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop

from serving.core.errors import InferenceError, NotReadyError
from serving.execution import shared_arrays
from serving.execution.pool import InferencePool
from serving.execution.runtime import RuntimePolicy
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW
from tests.serving.execution.waits import answered, until
from tests.serving.regions import shared_regions
from training.onnx_export import PROBA_TOLERANCE


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
            results = await answered(
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


def test_estimator_errors_come_back_as_inference_errors(trained_store: ModelStore) -> None:
    async def scenario() -> None:
        pool = InferencePool(trained_store.root, [("iris", 1)], size=1)
        try:
            await pool.start()
            with pytest.raises(InferenceError):
                await answered(pool.submit(("iris", 1), np.zeros((1, 3)), False))  # wrong width
            ok = await answered(pool.submit(("iris", 1), np.array([[5.1, 3.5, 1.4, 0.2]]), False))
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
            result = await answered(pool.submit(("breast_cancer", 1), rows, True))
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
                result = await answered(pool.submit(("iris", 1), batch, True))
                assert result.predictions.tolist() == iris.predict(batch).tolist()
                assert result.probabilities is not None
                assert np.allclose(
                    result.probabilities, iris.predict_proba(batch), rtol=0, atol=PROBA_TOLERANCE
                )
                values = rng.uniform(-0.1, 0.1, size=(rows, 10))
                answer = await answered(pool.submit(("diabetes", 1), values, False))
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
                await answered(pool.submit(("iris", 1), row, False))
            assert await pool.load_model(("iris", 1)) in {"onnx", "sklearn"}
            results = await answered(
                asyncio.gather(*(pool.submit(("iris", 1), row, False) for _ in range(8)))
            )
            assert {r.predictions.tolist()[0] for r in results} == {"setosa"}
            # A worker started after the load (here: after a crash) loads the current set.
            victim = pool.pids[0]
            os.kill(victim, signal.SIGKILL)
            # Both workers again (one serving alone would keep the pool up): a replacement.
            await until(lambda: pool.restarts == 1 and pool.workers_ready == pool.size)
            assert victim not in pool.pids
            assert len(pool.pids) == pool.size
            results = await answered(
                asyncio.gather(*(pool.submit(("iris", 1), row, False) for _ in range(8)))
            )
            assert {r.predictions.tolist()[0] for r in results} == {"setosa"}
            with pytest.raises(InferenceError, match="ModelNotFoundError"):
                await pool.load_model(("iris", 99))
            await pool.unload_model(("iris", 1))
            with pytest.raises(InferenceError):
                await answered(pool.submit(("iris", 1), row, False))
            assert pool.up
        finally:
            pool.close()

    asyncio.run(scenario())


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
            result = await answered(pool.submit(("threads", 1), rows, False))
        finally:
            pool.close()
        return list(result.predictions.tolist())

    # n_jobs 1 (10 x 1) and one BLAS thread.
    assert asyncio.run(scenario()) == [11.0, 11.0, 11.0]


def _mapped_files(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as maps:
        return maps.read()


@pytest.mark.parametrize("sklearn_models", [frozenset(), frozenset({"iris"})])
def test_a_worker_imports_scikit_learn_only_for_a_model_that_runs_on_it(
    trained_store: ModelStore, sklearn_models: frozenset[str]
) -> None:
    """A store served by ONNX Runtime alone keeps scikit-learn (and its ~100 MB) out of the
    worker; one model on scikit-learn brings it in, thread limit and configuration included."""
    keys = [("iris", 1), ("diabetes", 1)]
    policy = RuntimePolicy(sklearn_models=sklearn_models)

    async def scenario() -> tuple[dict[Any, str], str]:
        pool = InferencePool(trained_store.root, keys, size=1, policy=policy)
        try:
            await pool.start()
            return dict(pool.runtimes), _mapped_files(pool.pids[0])
        finally:
            pool.close()

    runtimes, maps = asyncio.run(scenario())
    expected = {key: "sklearn" if key[0] in sklearn_models else "onnx" for key in keys}
    assert runtimes == expected
    assert ("/sklearn/" in maps) == bool(sklearn_models)


def _forest_rows(n: int) -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    return np.resize(data, (n, data.shape[1]))


def test_a_prediction_never_waits_behind_an_explanation(trained_store: ModelStore) -> None:
    """A pool of one answers predictions while its worker explains: the worker's first
    explanation (importing shap, building the explainer, then thousands of rows) is still
    running when predictions sent after it come back."""
    forest, iris = ("breast_cancer", 1), ("iris", 1)
    rows = _forest_rows(3000)

    async def scenario() -> tuple[list[bool], Any]:
        pool = InferencePool(trained_store.root, [forest, iris], size=1)
        try:
            await pool.start()
            explained = pool.submit(forest, rows, False, explain=True)
            waiting = []
            for _ in range(3):
                predicted = await answered(pool.submit(iris, np.array([IRIS_ROW]), False))
                assert predicted.predictions.tolist() == ["setosa"]
                waiting.append(not explained.done())
            return waiting, await answered(explained)
        finally:
            pool.close()

    waiting, explanation = asyncio.run(scenario())
    assert waiting == [True, True, True]
    assert explanation.contributions is not None
    assert explanation.contributions.values.shape[:2] == rows.shape
    assert len(explanation.predictions) == len(rows)


def test_explained_batches_share_the_worker_with_batches_and_large_ones(
    trained_store: ModelStore,
) -> None:
    """Explained and predicted batches in flight together on one worker, some through shared
    memory, each get their own answer."""
    forest = ("breast_cancer", 1)
    rows = _forest_rows(5000)  # 1.2 MB: through the shared regions
    _, model = trained_store.load_model(*forest)

    async def scenario() -> list[Any]:
        pool = InferencePool(trained_store.root, [forest], size=1)
        try:
            await pool.start()
            return await answered(
                asyncio.gather(
                    *(
                        pool.submit(forest, rows[i * 40 : i * 40 + 40], True, explain=True)
                        if i % 3 == 0
                        else pool.submit(forest, rows, True)
                        for i in range(9)
                    )
                )
            )
        finally:
            pool.close()

    results = asyncio.run(scenario())
    expected = model.predict(rows).tolist()
    for i, result in enumerate(results):
        if i % 3 == 0:
            part = rows[i * 40 : i * 40 + 40]
            assert result.predictions.tolist() == model.predict(part).tolist()
            assert result.contributions is not None
            assert result.contributions.values.shape[:2] == part.shape
        else:
            assert result.predictions.tolist() == expected
            assert result.contributions is None
