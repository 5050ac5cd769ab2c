"""The production pointer, its rollback history and lock (serving.store.pointer), through
ModelStore: promote, rollback, strict parsing, no links followed, no entry lost."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from serving.store import (
    IntegrityError,
    ModelNotFoundError,
    ModelStore,
    StoreError,
)
from tests.serving.store.minimal import publish


def test_promote_and_rollback_walk_the_history(store: ModelStore) -> None:
    for _ in range(3):
        publish(store)
    assert store.production("m") is None
    assert store.promote("m", 1) is None
    assert store.promote("m", 2) == 1
    assert store.promote("m", 3) == 2
    assert store.rollback("m") == (3, 2)
    assert store.production("m") == 2
    assert store.rollback("m") == (2, 1)
    with pytest.raises(StoreError, match="no earlier production version"):
        store.rollback("m")
    assert store.production("m") == 1


def test_promote_refuses_missing_or_tampered_versions(store: ModelStore) -> None:
    publish(store)
    with pytest.raises(ModelNotFoundError):
        store.promote("m", 5)
    (store.version_path("m", 1) / "model.joblib").write_bytes(b"evil")
    with pytest.raises(IntegrityError):
        store.promote("m", 1)
    assert store.production("m") is None


def test_pointer_replacement_is_atomic_file_swap(store: ModelStore) -> None:
    publish(store)
    publish(store)
    store.promote("m", 1)
    pointer = store.root / "m" / "production"
    inode = pointer.stat().st_ino
    store.promote("m", 2)
    assert pointer.read_text() == "2\n"
    assert pointer.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert [p.name for p in (store.root / "m").iterdir() if p.name.startswith(".")] == []


def test_rollback_of_an_unknown_model_says_so(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        store.rollback("nope")


@pytest.mark.parametrize("text", ["²\n", "+2\n", "-1\n", "02\n", "2 3\n", "", "0\n", "\u0661\n"])
def test_a_production_pointer_that_is_not_a_plain_number_is_corrupt(
    store: ModelStore, text: str
) -> None:
    publish(store)
    (store.root / "m" / "production").write_text(text, encoding="utf-8")
    with pytest.raises(StoreError, match=r"production pointer .* is corrupt"):
        store.production("m")


@pytest.mark.parametrize("text", ["{", "[1, 'x']", '["1"]', "[1, true]", '{"a": 1}', "[0]"])
def test_a_corrupt_history_stops_promote_and_rollback_naming_the_file(
    store: ModelStore, text: str
) -> None:
    for _ in range(3):
        publish(store)
    store.promote("m", 1)
    store.promote("m", 2)
    (store.root / "m" / "history.json").write_text(text, encoding="utf-8")
    with pytest.raises(StoreError, match=r"rollback history .*history\.json is corrupt"):
        store.promote("m", 3)
    with pytest.raises(StoreError, match=r"history\.json is corrupt"):
        store.rollback("m")
    assert store.production("m") == 2


@pytest.mark.parametrize("rel", ["production", "history.json"])
def test_a_symlinked_pointer_or_history_is_refused(
    store: ModelStore, tmp_path: Path, rel: str
) -> None:
    for _ in range(2):
        publish(store)
    store.promote("m", 1)
    store.promote("m", 2)
    path = store.root / "m" / rel
    outside = tmp_path / "outside"
    shutil.copyfile(path, outside)
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link"):
        store.rollback("m")


def _promote_alternately(root: str, rounds: int) -> list[tuple[int, int | None]]:
    store = ModelStore(root)
    out = []
    for i in range(rounds):
        version = 1 + i % 2
        out.append((version, store.promote("m", version)))
    return out


def test_concurrent_promotes_lose_no_history_entry(store: ModelStore) -> None:
    publish(store)
    publish(store)
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        results = pool.starmap(_promote_alternately, [(str(store.root), 40)] * 4)
    changes = sum(1 for run in results for v, prev in run if prev is not None and prev != v)
    history = json.loads((store.root / "m" / "history.json").read_text())
    assert len(history) == changes
