"""Publishing versions (serving.store.publishing), through ModelStore.create_version: numbers
claimed in order, and nothing visible until a version is whole."""

from __future__ import annotations

import pytest

from serving.store import (
    ModelStore,
)
from tests.serving.store.minimal import fields, publish


def test_versions_are_monotonic_and_hashed(store: ModelStore) -> None:
    assert publish(store) == 1
    assert publish(store, payload=b"other") == 2
    assert store.versions("m") == [1, 2]
    manifest = store.verify("m", 2)
    assert set(manifest.files) == {"model.joblib", "report/model_card.md"}
    assert manifest.name == "m"
    assert manifest.version == 2


def test_failed_write_leaves_nothing_visible(store: ModelStore) -> None:
    def crash_mid_write() -> None:
        with store.create_version("m", fields()) as staged:
            staged.model_path.write_bytes(b"half")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        crash_mid_write()
    assert store.versions("m") == []
    assert store.names() == []
    assert list((store.root / "m").iterdir()) == []


def test_invalid_manifest_fields_leave_nothing(store: ModelStore) -> None:
    with (
        pytest.raises(ValueError, match="task"),
        store.create_version("m", fields(task="clustering")) as staged,
    ):
        staged.model_path.write_bytes(b"x")
    assert list((store.root / "m").iterdir()) == []
