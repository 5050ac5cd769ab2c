"""The data plane without HTTP: which versions are served, inline mode, signed stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.codecs.typed import TypedCodec
from serving.core.context import RequestContext
from serving.core.dataplane import DataPlane
from serving.core.errors import (
    InvalidInputError,
    ModelUnavailableError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.core.loading import build_dataplane
from serving.core.predictor import predict
from serving.settings import Settings
from serving.store import ModelStore
from training.run import train
from training.spec import shipped_spec

BODY = b'{"rows": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], "return_probabilities": true}'


def _quiet(_: str) -> None:
    """Echo sink for train()."""


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """iris trained twice, signed; production stays at v1."""
    trained_store = ModelStore(tmp_path_factory.mktemp("signed"), signing_key=b"secret")
    spec = shipped_spec("iris")
    train(spec, trained_store, echo=_quiet)
    train(spec.with_overrides({"estimator": {"params": {"C": 0.5}}}), trained_store, echo=_quiet)
    trained_store.promote("iris", 1)
    return trained_store


def _start(store: ModelStore, **settings: Any) -> DataPlane:
    dataplane = build_dataplane(Settings(store=store.root, inference="inline", **settings))
    asyncio.run(dataplane.start())
    return dataplane


def test_inline_mode_serves_production_and_matches_the_model(two_versions: ModelStore) -> None:
    dataplane = _start(two_versions, signing_key="secret")
    try:
        assert set(dataplane.models) == {("iris", 1)}
        assert dataplane.readiness()[0]
        served = dataplane.resolve("iris")
        codec = TypedCodec(dataplane)
        rows, want, *_ = codec.decode(served, BODY)

        async def go() -> np.ndarray:
            result = await predict(dataplane, served, rows, want, RequestContext("t"))
            return result.prediction.predictions

        _, model = two_versions.load_model("iris", 1)
        assert asyncio.run(go()).tolist() == model.predict(rows).tolist()
        with pytest.raises(UnknownVersionError):
            dataplane.resolve("iris", 2)
        with pytest.raises(UnknownModelError):
            dataplane.resolve("rose")
        with pytest.raises(InvalidInputError):
            codec.decode(served, b'{"rows": [[1, 2]]}')
    finally:
        dataplane.close()


def test_all_versions_on_request(two_versions: ModelStore) -> None:
    dataplane = _start(two_versions, signing_key="secret", serve_all_versions=True)
    try:
        assert set(dataplane.models) == {("iris", 1), ("iris", 2)}
        assert dataplane.default_version["iris"] == 1
        assert dataplane.resolve("iris", 2).manifest.version == 2
    finally:
        dataplane.close()


def test_a_wrong_signing_key_means_not_served(two_versions: ModelStore) -> None:
    dataplane = _start(two_versions, signing_key="not-the-key")
    try:
        assert ("iris", 1) in dataplane.unreadable
        assert "signature" in dataplane.unreadable[("iris", 1)]
        with pytest.raises(ModelUnavailableError):
            dataplane.resolve("iris")
        ok, detail = dataplane.readiness()
        assert not ok
        assert detail["models"]["iris"]["1"]["state"] == "failed"
    finally:
        dataplane.close()


def test_a_corrupt_production_pointer_fails_only_that_model(
    tmp_path: Path, trained_store: ModelStore
) -> None:
    import shutil

    for name in ("iris", "diabetes"):
        shutil.copytree(trained_store.root / name, tmp_path / name)
    (tmp_path / "diabetes" / "production").write_text("garbage\n")
    dataplane = _start(ModelStore(tmp_path))
    try:
        ok, detail = dataplane.readiness()
        assert not ok
        assert detail["models"]["diabetes"]["production"]["state"] == "failed"
        assert detail["models"]["iris"]["1"]["state"] == "ready"
        with pytest.raises(ModelUnavailableError):
            dataplane.resolve("diabetes")
        assert dataplane.resolve("iris").manifest.name == "iris"
    finally:
        dataplane.close()


@pytest.mark.parametrize("folder", ["empty", "typo"])
def test_an_empty_or_missing_store_is_not_ready(tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty").mkdir()
    dataplane = _start(ModelStore(tmp_path / folder))
    try:
        assert dataplane.models == {}
        ok, detail = dataplane.readiness()
        assert not ok  # a typo in the store path must not look healthy
        assert "empty or missing" in detail["store_error"]
    finally:
        dataplane.close()
