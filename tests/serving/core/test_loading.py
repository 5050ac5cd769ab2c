"""Loading: discovery in the store, environment checks, startup and one version at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from serving.core.errors import ArtifactRefusedError
from serving.core.loading import Loader
from serving.core.registry import ModelState, Registry, ServedModel, Unserved
from serving.execution import inline
from serving.execution.executor import ModelKey, Opened
from serving.execution.inline import InlineExecutor
from serving.execution.runtime import LoadedModel, RuntimePolicy, load
from serving.explain import Explainer
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, train_into
from training.run import train
from training.spec import shipped_spec


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """iris v1 (production) and v2, diabetes v1."""
    trained = train_into(tmp_path_factory.mktemp("loading"), ["iris", "diabetes"])
    spec = shipped_spec("iris").with_overrides({"estimator": {"params": {"C": 0.5}}})
    train(spec, trained, echo=lambda _: None)
    trained.promote("iris", 1)
    return trained


class _Refusing(InlineExecutor):
    """Inline, but fails to open one version (as a pool worker that cannot load it)."""

    def __init__(self, store: ModelStore, refuse: ModelKey) -> None:
        def loader(key: ModelKey) -> LoadedModel:
            return load(store, *key, RuntimePolicy())

        super().__init__({}, loader)
        self.refuse = refuse

    async def open(self, keys: Sequence[ModelKey]) -> Opened:
        opened = await super().open([k for k in keys if k != self.refuse])
        opened.failed[self.refuse] = "RuntimeError: cannot load"
        return opened


def _loader(store: ModelStore, executor: InlineExecutor, **settings: object) -> Loader:
    values = {"store": store.root, "inference": "inline", **settings}
    return Loader(Settings(**values), store, executor, Registry())  # type: ignore[arg-type]


def test_discovery_picks_production_or_every_version(store: ModelStore) -> None:
    executor = InlineExecutor({})
    try:
        loader = _loader(store, executor)
        loader.discover()
        assert set(loader.registry.models) == {("iris", 1), ("diabetes", 1)}
        assert loader.registry.default_version == {"iris": 1, "diabetes": 1}
        assert all(r.state == ModelState.LOADING for r in loader.registry.models.values())
        every = _loader(store, executor, serve_all_versions=True)
        every.discover()
        assert set(every.registry.models) == {("iris", 1), ("iris", 2), ("diabetes", 1)}
    finally:
        executor.close()


def test_environment_check_warns_or_refuses(store: ModelStore) -> None:
    executor = InlineExecutor({})
    try:
        manifest = store.manifest("iris", 1)
        loader = _loader(store, executor)
        assert loader.check_environment(manifest) == []
        loader.sklearn_version = "0.0"
        (warning,) = loader.check_environment(manifest)
        assert warning.endswith("serving with 0.0")
        strict = _loader(store, executor, strict_sklearn_version=True)
        strict.sklearn_version = "0.0"
        with pytest.raises(ArtifactRefusedError, match="strict_sklearn_version"):
            strict.check_environment(manifest)
    finally:
        executor.close()


def test_start_serves_what_loaded_and_reports_what_did_not(store: ModelStore) -> None:
    executor = _Refusing(store, ("diabetes", 1))
    loader = _loader(store, executor)
    try:
        asyncio.run(loader.start())
        iris = loader.registry.models[("iris", 1)]
        assert isinstance(iris, ServedModel)
        assert iris.runtime in {"sklearn", "onnx"}
        diabetes = loader.registry.models[("diabetes", 1)]
        assert isinstance(diabetes, Unserved)
        assert diabetes.state == ModelState.FAILED
        assert diabetes.error == "RuntimeError: cannot load"
        assert loader.store_error is None
    finally:
        executor.close()


def test_load_builds_a_record_without_registering_it(store: ModelStore) -> None:
    executor = _Refusing(store, ("diabetes", 1))
    loader = _loader(store, executor)

    async def go() -> ServedModel:
        await loader.start()
        return await loader.load(("iris", 2))

    try:
        record = asyncio.run(go())
        assert record.key == ("iris", 2)
        assert not record.retired
        assert ("iris", 2) not in loader.registry.models
        assert record.title != loader.registry.resolve("iris").title
    finally:
        executor.close()


def test_a_missing_store_is_reported(tmp_path_factory: pytest.TempPathFactory) -> None:
    missing = ModelStore(tmp_path_factory.mktemp("empty") / "nowhere")
    executor = InlineExecutor({})
    loader = _loader(missing, executor)
    try:
        asyncio.run(loader.start())
        assert not loader.registry.models
    finally:
        executor.close()


class _SlowToExplain(InlineExecutor):
    """Inline, with real models whose explainer takes until ``release`` is set to build (as
    a process's first explanation does while it imports scikit-learn and shap)."""

    def __init__(self, store: ModelStore) -> None:
        self.release = threading.Event()

        def loader(key: ModelKey) -> LoadedModel:
            model = load(store, *key, RuntimePolicy())
            build = model._make_explainer
            assert build is not None, "the shipped iris has an explanation background"

            def slow() -> Explainer:
                self.release.wait(30)
                return build()

            model._make_explainer = slow
            return model

        super().__init__({}, loader)


def test_a_prediction_never_waits_for_an_explanation(store: ModelStore) -> None:
    """An explained batch holds neither the slot nor the thread a prediction needs: a batch
    too large for the event loop is answered while an explanation is still being built."""
    executor = _SlowToExplain(store)
    loader = _loader(store, executor)

    async def go() -> tuple[bool, list[str], tuple[int, ...]]:
        await loader.start()
        served = loader.registry.models[("iris", 1)]
        assert isinstance(served, ServedModel)
        assert served.explainer is not None
        explained = served.explainer.submit(np.array([IRIS_ROW]), False)
        rows = np.array([IRIS_ROW] * (inline.LOOP_ROWS + 1))  # beyond the loop: the thread
        predicted = await asyncio.wait_for(served.batcher.submit(rows, False), 10)
        waiting = not explained.done()
        executor.release.set()
        contributions = (await asyncio.wait_for(explained, 30)).contributions
        assert contributions is not None
        return waiting, list(predicted.predictions[:1]), contributions.values.shape[:2]

    try:
        waiting, predictions, explained_shape = asyncio.run(go())
    finally:
        executor.release.set()
        executor.close()
    assert waiting  # the prediction came back while the explanation was still on its way
    assert predictions == ["setosa"]
    assert explained_shape == (1, 4)  # one row, iris's four features
