"""Both executors satisfy the Executor protocol and answer status() (what readiness and the
metrics read) without anyone testing their type."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.execution.executor import Executor, ExecutorStatus
from serving.execution.factory import build_executor, resolve_inference
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool
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
