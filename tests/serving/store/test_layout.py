"""Where the store finds models and versions (serving.store.layout), through ModelStore:
valid names and version numbers, hidden folders, and links it never follows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.store import (
    IntegrityError,
    InvalidNameError,
    ModelStore,
    StoreError,
)
from tests.serving.store.minimal import publish


def test_staging_directories_are_invisible(store: ModelStore) -> None:
    publish(store)
    (store.root / "m" / ".staging-leftover").mkdir()
    (store.root / "m" / "7").mkdir()  # a folder without a manifest is not a version
    assert store.versions("m") == [1]
    assert publish(store) == 2


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden", "", "x" * 65])
def test_names_cannot_escape_the_store(store: ModelStore, name: str) -> None:
    with pytest.raises(InvalidNameError):
        store.versions(name)


def test_symlinked_model_directory_is_refused(store: ModelStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store.root.mkdir(parents=True)
    (store.root / "evil").symlink_to(outside)
    with pytest.raises(InvalidNameError, match="escapes"):
        store.versions("evil")
    assert store.names() == []


@pytest.mark.parametrize("folder", ["²", "01", "\u0663", "0"])
def test_a_version_folder_that_only_looks_like_a_number_is_a_store_error(
    store: ModelStore, folder: str
) -> None:
    publish(store)
    shutil.copytree(store.version_path("m", 1), store.root / "m" / folder)
    with pytest.raises(StoreError, match="not a valid version folder name"):
        store.versions("m")
    assert store.names() == ["m"]  # listed, so that its problem is reported


def test_a_symlinked_version_folder_is_refused(store: ModelStore, tmp_path: Path) -> None:
    publish(store)
    outside = tmp_path / "outside"
    shutil.copytree(store.version_path("m", 1), outside)
    (store.root / "m" / "2").symlink_to(outside)
    assert store.versions("m") == [1, 2]  # listed, and refused when read
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.verify("m", 2)
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.manifest("m", 2)
