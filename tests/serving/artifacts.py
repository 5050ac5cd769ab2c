"""Helpers for lifecycle tests: publish versions without training, tamper with them, and a
pickle whose unpickling would leave a marker file (proof that nothing was executed)."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import pickle
import shutil
import time
from typing import Any

import joblib
import numpy as np

from serving.store import MODEL_FILE, PRODUCTION_FILE, ModelStore


class TouchOnUnpickle:
    """Unpickling this creates ``path``: if the marker exists, the artifact was executed."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def malicious_pickle(marker: pathlib.Path) -> bytes:
    return pickle.dumps(TouchOnUnpickle(marker))


def publish_copy(
    store: ModelStore,
    name: str,
    source: ModelStore,
    source_name: str,
    source_version: int,
    *,
    manifest_changes: dict[str, Any] | None = None,
    model_bytes: bytes | None = None,
    with_onnx: bool = True,
    with_explain: bool = False,
) -> int:
    """Publish a copy of ``source_name`` v``source_version`` as the next version of ``name``,
    without promoting it (training would apply the gate). Returns the new version number."""
    manifest = source.manifest(source_name, source_version)
    src = source.version_path(source_name, source_version)
    fields = manifest.model_dump(mode="json", exclude={"name", "version", "files"})
    onnx_file = manifest.onnx.file if manifest.onnx and with_onnx else None
    if not with_onnx:
        fields["onnx"] = None
    fields.update(manifest_changes or {})
    with store.create_version(name, fields) as staged:
        if model_bytes is None:
            shutil.copyfile(src / MODEL_FILE, staged.model_path)
        else:
            staged.model_path.write_bytes(model_bytes)
        if onnx_file is not None:
            shutil.copyfile(src / onnx_file, staged.path / onnx_file)
            graphs = manifest.onnx.graphs if manifest.onnx else None
            for rel in set(graphs.files.values()) - {onnx_file} if graphs else ():
                (staged.path / rel).parent.mkdir(exist_ok=True)
                shutil.copyfile(src / rel, staged.path / rel)
        if with_explain and manifest.explainable and manifest.explain and manifest.explain.file:
            shutil.copyfile(src / manifest.explain.file, staged.path / manifest.explain.file)
    assert staged.version is not None
    return staged.version


def flip_a_byte(path: pathlib.Path) -> None:
    """Change one byte in the middle of ``path``: its sha256 no longer matches the manifest."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def set_production(store: ModelStore, name: str, version: int) -> None:
    """Move the pointer without the store's verification, as a careless script or an
    attacker with write access to the store could."""
    (store.root / name / PRODUCTION_FILE).write_text(f"{version}\n", encoding="utf-8")


class _Digest:
    """A sha256 that, once it has produced the digest of ``hook.original``, lets the hook swap
    the file on disk: the moment between hashing a file and deserialising it."""

    def __init__(self, hook: SwapAfterHashing, data: bytes = b"") -> None:
        self._hook = hook
        self._real = hashlib.sha256()
        self._seen = bytearray()
        self.update(data)

    def update(self, data: bytes) -> None:
        self._real.update(data)
        self._seen += data

    def hexdigest(self) -> str:
        out = self._real.hexdigest()
        if bytes(self._seen) == self._hook.original:
            self._hook.swap()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class SwapAfterHashing:
    """Stands in for the ``hashlib`` module of serving.store.artifact (monkeypatched): right
    after the store hashes ``target``'s bytes, ``target`` is atomically replaced by
    ``replacement``, as an ``os.replace`` loop racing the loader would."""

    def __init__(self, target: pathlib.Path, replacement: bytes) -> None:
        self.target = target
        self.original = target.read_bytes()
        self.replacement = replacement
        self.swapped = 0

    def sha256(self, data: bytes = b"") -> _Digest:
        return _Digest(self, data)

    def swap(self) -> None:
        tmp = self.target.with_name(self.target.name + ".swap")
        tmp.write_bytes(self.replacement)
        os.replace(tmp, self.target)
        self.swapped += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(hashlib, name)


class RaisingClassifier:
    """An iris-shaped classifier that raises ``KeyError(('iris', 1))`` on every row
    (``always``) or on rows whose first value is negative: a model that fails inside the
    worker. Unpickled by the pool's workers, so it lives in an importable module."""

    def __init__(self, always: bool) -> None:
        self.always = always
        self.classes_ = np.array(["setosa", "versicolor", "virginica"], dtype=object)

    def predict(self, X: Any) -> Any:
        rows = np.asarray(X, dtype=np.float64)
        if self.always or (rows[:, 0] < 0).any():
            raise KeyError(("iris", 1))
        return self.classes_.take(np.zeros(len(rows), dtype=np.intp))


def raising_model_bytes(always: bool) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(RaisingClassifier(always), buffer)
    return buffer.getvalue()


class SlowClassifier:
    """An iris-shaped classifier that takes ``seconds`` for every batch: rows queued behind
    it wait long enough for a test to see them waiting."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.classes_ = np.array(["setosa", "versicolor", "virginica"], dtype=object)

    def predict(self, X: Any) -> Any:
        time.sleep(self.seconds)
        return self.classes_.take(np.zeros(len(X), dtype=np.intp))


def slow_model_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(SlowClassifier(seconds), buffer)
    return buffer.getvalue()
