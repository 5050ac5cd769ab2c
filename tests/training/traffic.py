"""Labelled traffic for the retraining tests: a real model's captured predictions, written with
the real CaptureStore, and feedback labels for them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.capture.database import ensure_schema, open_engine
from serving.capture.records import Captured, Label
from serving.capture.store import CaptureStore
from serving.execution.runtime import Prediction
from serving.store import Manifest, ModelStore

START = 1_780_000_000.0
"""Prediction times of the fake traffic start here (UTC seconds), one second apart."""

ROTATE = {"setosa": "versicolor", "versicolor": "virginica", "virginica": "setosa"}
"""The world changed: traffic labels iris species as the next one, which production gets wrong."""


@dataclass
class Written:
    """What a test wrote, to check what training read."""

    ts: list[float] = field(default_factory=list)
    """Prediction time of each labelled, usable, distinct captured row."""
    requests: list[str] = field(default_factory=list)


def iris_rows() -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    # Traffic comes in any order, not sorted by species as the dataset is.
    order = np.random.default_rng(0).permutation(len(bunch.target))
    names = [str(bunch.target_names[t]) for t in bunch.target[order]]
    return np.asarray(bunch.data[order], dtype=np.float64), names


def captured(
    manifest: Manifest, request_id: str, rows: np.ndarray, ts: float, classes: list[str]
) -> Captured:
    labels = np.array([classes[0]] * len(rows), dtype=object)
    return Captured(
        manifest=manifest,
        request_id=request_id,
        ts=ts,
        latency_ms=2.5,
        transport="rest",
        rows=rows,
        prediction=Prediction(labels, np.full((len(rows), len(classes)), 1 / len(classes))),
        class_keys=classes,
    )


def write_iris_traffic(
    store: ModelStore, url: str, *, labelled: int, unlabelled: int = 0, per_request: int = 2
) -> Written:
    """``labelled`` + ``unlabelled`` captured iris rows (cycling through the dataset), in
    requests of ``per_request`` rows one second apart; labels rotated (see ROTATE)."""
    manifest = store.manifest("iris", store.production("iris") or 1)
    classes = [str(c) for c in manifest.target.classes or []]
    X, y = iris_rows()
    engine = open_engine(url)
    ensure_schema(engine)
    capture = CaptureStore(engine)
    written = Written()
    total = labelled + unlabelled
    batch, labels = [], []
    for start in range(0, total, per_request):
        idx = [i % len(X) for i in range(start, min(start + per_request, total))]
        request_id = f"req-{start}"
        ts = START + start
        batch.append(captured(manifest, request_id, X[idx], ts, classes))
        written.requests.append(request_id)
        for row, i in enumerate(idx):
            if start + row < labelled:
                labels.append(Label(request_id, row, ROTATE[y[i]]))
                written.ts.append(ts)
    capture.write(batch)
    capture.record_labels("iris", labels, now=START + total + 60)
    engine.dispose()
    return written


def write_rows(url: str, records: list[Captured], labels: list[Label], model: str) -> None:
    """Write ``records`` (each with its own manifest) and their ``labels``."""
    engine = open_engine(url)
    ensure_schema(engine)
    capture = CaptureStore(engine)
    for record in records:  # one store per manifest: the store caches decoders per version
        CaptureStore(engine).write([record])
    capture.record_labels(model, labels, now=START + 10_000)
    engine.dispose()
