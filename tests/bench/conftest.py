"""Fixtures for the benchmark helpers: a real iris model trained into a temporary store."""

from pathlib import Path

import pytest

from serving.store import Manifest, ModelStore
from training.run import train
from training.spec import shipped_spec


def _quiet(_: str) -> None:
    """Echo sink for train()."""


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(Path(tmp_path_factory.mktemp("bench-store")))
    train(shipped_spec("iris"), store, echo=_quiet)
    return store


@pytest.fixture(scope="session")
def iris(store: ModelStore) -> Manifest:
    return store.manifest("iris", 1)
