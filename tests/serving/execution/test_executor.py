"""Both executors satisfy the Executor protocol and answer status() (what readiness and the
metrics read) without anyone testing their type."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.execution.executor import Executor, ExecutorStatus
from serving.execution.factory import build_executor
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, train_into


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
