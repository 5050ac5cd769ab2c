"""The registry: immutable records, resolving, hot swap and forgetting a model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from serving.core.dataplane import DataPlane
from serving.core.errors import ModelUnavailableError, UnknownModelError, UnknownVersionError
from serving.core.registry import ModelState, Registry, Retirement, ServedModel, Unserved
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import dataplane_for, train_into
from training.run import train
from training.spec import shipped_spec


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """iris v1 and v2 (production v2), and diabetes v1."""
    trained = train_into(tmp_path_factory.mktemp("registry"), ["iris", "diabetes"])
    spec = shipped_spec("iris").with_overrides({"estimator": {"params": {"C": 0.5}}})
    train(spec, trained, echo=lambda _: None)
    trained.promote("iris", 2)
    return trained


@pytest.fixture(scope="module")
def dataplane(store: ModelStore) -> Iterator[DataPlane]:
    """Inline, every version served."""
    dp = dataplane_for(Settings(store=store.root, inference="inline", serve_all_versions=True))
    asyncio.run(dp.start())
    yield dp
    dp.close()


def _fresh(dataplane: DataPlane) -> Registry:
    """A registry holding the data plane's records (so tests can change it freely)."""
    registry = Registry()
    registry.models.update(dataplane.registry.models)
    registry.default_version.update(dataplane.registry.default_version)
    return registry


def test_records_are_frozen_and_complete(dataplane: DataPlane) -> None:
    served = dataplane.registry.resolve("iris")
    assert served.key == ("iris", 2)
    assert served.state == ModelState.READY
    assert served.error is None
    assert served.runtime in {"sklearn", "onnx"}
    assert served.class_keys == ["setosa", "versicolor", "virginica"]
    assert served.all_numeric
    assert not served.retired
    with pytest.raises(dataclasses.FrozenInstanceError):
        served.title = "other"  # type: ignore[misc]
    titles = [s.title for s in dataplane.ready_models()]
    assert len(titles) == len(set(titles)) == 3


def test_resolve_answers_production_a_version_or_a_domain_error(dataplane: DataPlane) -> None:
    registry = _fresh(dataplane)
    assert registry.resolve("iris").key == ("iris", 2)
    assert registry.resolve("iris", 1).key == ("iris", 1)
    with pytest.raises(UnknownModelError):
        registry.resolve("nope")
    with pytest.raises(UnknownVersionError, match="served: 1, 2"):
        registry.resolve("iris", 9)
    manifest = registry.resolve("diabetes").manifest
    registry.add(Unserved(manifest, ModelState.FAILED, "IntegrityError: hash mismatch"))
    with pytest.raises(ModelUnavailableError, match="hash mismatch"):
        registry.resolve("diabetes")
    registry.broken_names["iris"] = "ValueError: bad pointer"
    with pytest.raises(ModelUnavailableError, match="bad pointer"):
        registry.resolve("iris")


def test_switch_retires_the_old_records_in_one_step(dataplane: DataPlane) -> None:
    registry = _fresh(dataplane)
    v1, v2 = registry.resolve("iris", 1), registry.resolve("iris", 2)
    # A copy shares nothing mutable with the data plane's record: its own retirement flag.
    old = dataclasses.replace(v2, retirement=Retirement())
    registry.models[old.key] = old
    registry.switch("iris", 1, {}, [old])
    assert old.retired
    assert not v2.retired
    assert registry.default_version["iris"] == 1
    assert registry.resolve("iris") is v1
    assert registry.versions_of("iris") == [1]


def test_forget_drops_the_model_and_its_reports(dataplane: DataPlane) -> None:
    registry = _fresh(dataplane)
    registry.rejected[("iris", 3)] = "refused"
    registry.store_problems["iris"] = "unreadable"
    held = registry.resolve("iris", 1)
    old = dataclasses.replace(held, retirement=Retirement())
    registry.models[old.key] = old
    forgotten = registry.forget("iris")
    assert {r.key for r in forgotten} == {("iris", 1), ("iris", 2)}
    assert old.retired
    assert "iris" not in registry.default_version
    assert not registry.rejected
    assert not registry.store_problems
    assert registry.versions_of("iris") == []
    assert [s.key for s in registry.ready_models()] == [("diabetes", 1)]
    with pytest.raises(UnknownModelError):
        registry.resolve("iris")


def test_unserved_records_say_why(dataplane: DataPlane) -> None:
    manifest = dataplane.registry.resolve("diabetes").manifest
    record = Unserved(manifest, ModelState.LOADING)
    assert record.key == ("diabetes", 1)
    assert record.runtime is None
    assert not record.retired
    assert record.error is None
    registry = _fresh(dataplane)
    registry.add(record)
    assert not registry.is_ready(("diabetes", 1))
    assert registry.is_ready(("iris", 1))
    assert isinstance(registry.models[("iris", 1)], ServedModel)
