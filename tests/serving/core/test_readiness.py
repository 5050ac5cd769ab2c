"""The readiness answer, from the registry and the executor's status."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.core.dataplane import DataPlane
from serving.core.readiness import readiness
from serving.core.registry import ModelState, Registry, Unserved
from serving.execution.inline import InlineExecutor
from serving.settings import Settings
from tests.serving.conftest import dataplane_for, train_into


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    store = train_into(tmp_path_factory.mktemp("ready"), ["iris"])
    dp = dataplane_for(Settings(store=store.root, inference="inline"))
    asyncio.run(dp.start())
    yield dp
    dp.close()


def _copy(registry: Registry) -> Registry:
    out = Registry()
    out.models.update(registry.models)
    out.default_version.update(registry.default_version)
    return out


def test_ready_with_every_model_loaded_and_the_executor_up(dataplane: DataPlane) -> None:
    ok, detail = dataplane.readiness()
    assert ok
    assert detail["ready"]
    assert detail["executor"] == {
        "kind": "inline",
        "up": True,
        "size": 1,
        "workers_ready": 1,
        "replacing": 0,
        "restarts": 0,
    }
    assert detail["models"] == {"iris": {"1": {"state": "ready"}}}
    assert "store_error" not in detail


def test_an_empty_store_is_not_ready(tmp_path: Path) -> None:
    executor = InlineExecutor({})
    try:
        ok, detail = readiness(Registry(), executor, "inline", tmp_path / "store", None)
    finally:
        executor.close()
    assert not ok
    assert detail["store_error"] == (
        f"no models to serve: the store {tmp_path / 'store'} is empty or missing"
    )


def test_a_failed_version_or_a_down_executor_is_not_ready(
    dataplane: DataPlane, tmp_path: Path
) -> None:
    registry = _copy(dataplane.registry)
    manifest = registry.resolve("iris").manifest
    registry.add(Unserved(manifest, ModelState.FAILED, "IntegrityError: bad hash", ["old"]))
    ok, detail = readiness(registry, dataplane.executor, "inline", tmp_path, None)
    assert not ok
    assert detail["models"]["iris"]["1"] == {
        "state": "failed",
        "error": "IntegrityError: bad hash",
        "warnings": ["old"],
    }
    closed = InlineExecutor({})
    closed.close()
    ok, detail = readiness(_copy(dataplane.registry), closed, "inline", tmp_path, None)
    assert not ok
    assert detail["executor"]["up"] is False
    assert detail["executor"]["workers_ready"] == 0
    ok, detail = readiness(_copy(dataplane.registry), None, "pool", tmp_path, None)
    assert not ok
    assert detail["executor"]["size"] == 0


def test_reports_that_keep_the_service_ready_and_those_that_do_not(
    dataplane: DataPlane, tmp_path: Path
) -> None:
    registry = _copy(dataplane.registry)
    registry.rejected[("iris", 2)] = "refused"
    registry.store_problems["iris"] = "unreadable pointer"
    ok, detail = readiness(registry, dataplane.executor, "inline", tmp_path, None)
    assert ok
    assert detail["models"]["iris"]["2"] == {"state": "rejected", "error": "refused"}
    assert detail["models"]["iris"]["production"] == {
        "state": "rejected",
        "error": "unreadable pointer",
    }
    registry.unreadable[("iris", 3)] = "bad manifest"
    ok, detail = readiness(registry, dataplane.executor, "inline", tmp_path, "OSError: gone")
    assert not ok
    assert detail["store_error"] == "OSError: gone"
    assert detail["models"]["iris"]["3"] == {"state": "failed", "error": "bad manifest"}
