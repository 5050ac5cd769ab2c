"""Both executors satisfy the Executor protocol and answer status() (what readiness and the
metrics read) without anyone testing their type."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.core.errors import InferenceError
from serving.execution import inline
from serving.execution.executor import Executor, ExecutorStatus
from serving.execution.factory import build_executor, resolve_inference
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool
from serving.execution.runtime import load
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, train_into
from tests.serving.process import python_prints


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return train_into(tmp_path_factory.mktemp("executor"), ["iris"])


def _as_executor(executor: Executor) -> Executor:
    """Type-checked: mypy refuses a class missing part of the protocol."""
    return executor


async def _exercise(executor: Executor) -> tuple[ExecutorStatus, ExecutorStatus]:
    """Open with iris and a version that does not exist, predict, report status, close."""
    opened = await executor.open([("iris", 1), ("iris", 7)])
    assert set(opened.runtimes) == {("iris", 1)}
    assert opened.runtimes[("iris", 1)] in {"sklearn", "onnx"}
    assert ("iris", 7) in opened.failed
    rows = np.array([IRIS_ROW], dtype=np.float64)
    prediction = await executor.submit(("iris", 1), rows, True)
    assert prediction.predictions.tolist() == ["setosa"]
    running = executor.status()
    executor.close()
    return running, executor.status()


def test_inline_executor_opens_and_answers_status(store: ModelStore) -> None:
    executor = _as_executor(build_executor(Settings(store=store.root, inference="inline"), store))
    assert isinstance(executor, InlineExecutor)  # what the settings ask for, nothing more
    running, closed = asyncio.run(_exercise(executor))
    assert running == ExecutorStatus(
        up=True, size=1, workers=1, workers_ready=1, replacing=0, restarts=None
    )
    assert not closed.up
    assert closed.workers == closed.workers_ready == 0


def test_pool_opens_and_answers_status(store: ModelStore) -> None:
    settings = Settings(store=store.root, inference="pool", pool_size=1)
    executor = _as_executor(build_executor(settings, store))
    assert isinstance(executor, InferencePool)  # what the settings ask for, nothing more
    running, closed = asyncio.run(_exercise(executor))
    assert running == ExecutorStatus(
        up=True, size=1, workers=1, workers_ready=1, replacing=0, restarts=0
    )
    assert not closed.up


def test_inline_executor_serving_onnx_never_imports_sklearn(store: ModelStore) -> None:
    # The import took about a second on the executor's first batch (every request waited for
    # it) and about 100 MB; a version on ONNX Runtime does not need it.
    script = (
        "import asyncio, sys\n"
        "import numpy as np\n"
        "from serving.execution.factory import build_executor\n"
        "from serving.settings import Settings\n"
        "from serving.store import ModelStore\n"
        f"store = ModelStore({str(store.root)!r})\n"
        "executor = build_executor(Settings(store=store.root, inference='inline'), store)\n"
        "async def main():\n"
        "    opened = await executor.open([('iris', 1)])\n"
        "    assert opened.runtimes == {('iris', 1): 'onnx'}, opened\n"
        f"    rows = np.array([{IRIS_ROW!r}], dtype=np.float64)\n"
        "    got = await executor.submit(('iris', 1), rows, True)\n"
        "    executor.close()\n"
        "    return got.predictions.tolist()\n"
        "print(asyncio.run(main()), 'sklearn' in sys.modules)\n"
    )
    assert python_prints(script) == "['setosa'] False"


def test_inline_executor_runs_sklearn_versions_with_its_settings(store: ModelStore) -> None:
    """A version on scikit-learn runs with finiteness left to the edge (scikit-learn's
    settings are per thread: they must be set in the executor's own)."""
    settings = Settings(store=store.root, inference="inline", sklearn_models=frozenset({"iris"}))
    executor = build_executor(settings, store)
    assert isinstance(executor, InlineExecutor)

    async def main() -> tuple[str, bool]:
        opened = await executor.open([("iris", 1)])
        probe = asyncio.get_running_loop().create_future()

        def check() -> None:
            import sklearn

            probe.get_loop().call_soon_threadsafe(
                probe.set_result, sklearn.get_config()["assume_finite"]
            )

        rows = np.array([IRIS_ROW], dtype=np.float64)
        await executor.submit(("iris", 1), rows, False)
        executor._threads.submit(check)  # the executor's one thread, after the batch
        finite = await probe
        executor.close()
        return opened.runtimes[("iris", 1)], finite

    assert asyncio.run(main()) == ("sklearn", True)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "inline"),  # every production version on ONNX Runtime
        ({"sklearn_models": frozenset({"iris"})}, "pool"),
        ({"runtime": "sklearn"}, "pool"),
        ({"inference": "pool"}, "pool"),
        ({"inference": "inline", "runtime": "sklearn"}, "inline"),  # asked for: as asked
    ],
)
def test_auto_inference_is_inline_only_when_nothing_needs_scikit_learn(
    store: ModelStore, given: dict[str, Any], expected: str
) -> None:
    settings = resolve_inference(Settings(store=store.root, **given), store)
    assert settings.inference == expected
    executor = build_executor(Settings(store=store.root, **given), store)
    assert isinstance(executor, InlineExecutor if expected == "inline" else InferencePool)


def test_auto_inference_over_an_unreadable_store_is_inline(tmp_path: Path) -> None:
    # Loading reports the store's problem; a model published later that needs scikit-learn
    # runs inline, slower but served.
    missing = ModelStore(tmp_path / "nothing-here")
    assert resolve_inference(Settings(store=missing.root), missing).inference == "inline"


def test_small_batches_of_a_cheap_model_run_in_the_event_loop(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handing a batch to the thread and back costs more than a cheap model's small batch:
    those are answered at once, in the loop; larger batches and explanations go to the
    thread."""
    monkeypatch.setattr(inline, "LOOP_BUDGET_S", 1.0)  # cheap, however busy the box
    executor = build_executor(Settings(store=store.root, inference="inline"), store)
    assert isinstance(executor, InlineExecutor)

    async def main() -> list[tuple[bool, str]]:
        await executor.open([("iris", 1)])
        loop = asyncio.get_running_loop()
        seen = []
        for rows, explain in ((1, False), (inline.LOOP_ROWS, False), (inline.LOOP_ROWS + 1, False)):
            batch = np.array([IRIS_ROW] * rows, dtype=np.float64)
            future = executor.submit(("iris", 1), batch, False, explain)
            seen.append((future.done(), (await future).predictions[0]))
        explained = executor.submit(("iris", 1), np.array([IRIS_ROW]), False, True)
        seen.append((explained.done(), "explained"))
        with contextlib.suppress(Exception):  # iris may have no explanations here
            await explained
        assert loop.is_running()
        executor.close()
        return seen

    assert asyncio.run(main()) == [
        (True, "setosa"),
        (True, "setosa"),
        (False, "setosa"),
        (False, "explained"),
    ]


def test_a_model_over_the_budget_runs_every_batch_in_the_thread(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "LOOP_BUDGET_S", 0.0)
    executor = build_executor(Settings(store=store.root, inference="inline"), store)

    async def main() -> bool:
        await executor.open([("iris", 1)])
        future = executor.submit(("iris", 1), np.array([IRIS_ROW], dtype=np.float64), False)
        done = future.done()
        await future
        executor.close()
        return done

    assert asyncio.run(main()) is False


def test_a_batch_that_fails_in_the_event_loop_fails_like_one_in_the_thread(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline, "LOOP_BUDGET_S", 1.0)
    executor = build_executor(Settings(store=store.root, inference="inline"), store)

    async def main() -> tuple[BaseException | None, BaseException | None]:
        await executor.open([("iris", 1)])
        wrong = np.zeros((1, 3))  # iris takes 4 features: the runtime refuses it
        small = executor.submit(("iris", 1), wrong, False)
        assert small.done()  # in the loop
        large = executor.submit(("iris", 1), np.zeros((inline.LOOP_ROWS + 1, 3)), False)
        errors = []
        for future in (small, large):
            try:
                await future
            except Exception as exc:
                errors.append(exc)
        executor.close()
        return errors[0], errors[1]

    small, large = asyncio.run(main())
    assert isinstance(small, InferenceError)
    assert type(small) is type(large)


def test_a_model_whose_timed_batch_fails_is_timed_infinite(store: ModelStore) -> None:
    """Timing must not refuse a model that serves: its batches then go to the thread, where
    the callers get their errors as ever."""
    loaded = load(store, "iris", 1, Settings(store=store.root).runtime_policy())
    assert inline.batch_seconds(loaded) < 1.0

    def refuse(*_: Any) -> Any:
        raise ValueError("no batch today")

    loaded.predict = refuse  # type: ignore[method-assign,assignment]
    assert inline.batch_seconds(loaded) == float("inf")
