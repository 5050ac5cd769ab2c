"""Captured requests for the capture tests, without a server."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from serving.capture.records import Captured, CapturedRow
from serving.execution.runtime import Prediction
from serving.store import Environment, Feature, FeatureKind, Manifest, Target, Task

FEATURES = [
    Feature(name="size", kind=FeatureKind.NUMERIC, nullable=True),
    Feature(name="rooms", kind=FeatureKind.INTEGER),
    Feature(name="garden", kind=FeatureKind.BOOLEAN),
    Feature(name="city", kind=FeatureKind.CATEGORICAL, categories=["lyon", "paris"]),
]


def manifest(name: str = "houses", version: int = 1) -> Manifest:
    """A valid manifest of a classifier of these features (no files: nothing is loaded)."""
    return Manifest(
        name=name,
        version=version,
        created=datetime.now(UTC),
        task=Task.CLASSIFICATION,
        input_format="dataframe",
        features=FEATURES,
        target=Target(name="price", classes=["cheap", "dear"]),
        estimator="LogisticRegression",
        metrics={"f1_macro": 0.8},
        primary_metric="f1_macro",
        higher_is_better=True,
        spec={},
        data_fingerprint="0" * 64,
        n_train_rows=100,
        n_test_rows=25,
        files={},
        environment=Environment(python="3.11", sklearn="1", numpy="2", joblib="1", pandas="2"),
    )


def captured(
    request_id: str,
    rows: int = 1,
    *,
    name: str = "houses",
    version: int = 1,
    ts: float | None = None,
    probabilities: bool = True,
) -> Captured:
    encoded = np.array([[50.5 + i, 3, 1, 1] for i in range(rows)], dtype=np.float64)
    if rows:
        encoded[0, 0] = np.nan  # a null size
    labels = np.array(["cheap" if i % 2 else "dear" for i in range(rows)], dtype=object)
    proba = np.tile([0.25, 0.75], (rows, 1)) if probabilities else None
    return Captured(
        manifest=manifest(name, version),
        request_id=request_id,
        ts=time.time() if ts is None else ts,
        latency_ms=1.5,
        transport="rest",
        rows=encoded,
        prediction=Prediction(labels, proba),
        class_keys=["cheap", "dear"],
    )


def regressor(name: str = "prices", version: int = 1) -> Manifest:
    """A valid manifest of a regressor of these features (no files: nothing is loaded)."""
    return manifest(name, version).model_copy(
        update={
            "task": Task.REGRESSION,
            "target": Target(name="price"),
            "estimator": "Ridge",
            "metrics": {"rmse": 2.0, "mae": 1.5, "r2": 0.9},
            "primary_metric": "rmse",
            "higher_is_better": False,
        }
    )


def count_rows(url: str, model: str) -> int:
    """Captured rows of ``model`` in the database at ``url`` (a fresh engine: another process
    writes it)."""
    from serving.capture.database import open_engine
    from serving.capture.store import CaptureStore

    engine = open_engine(url)
    try:
        return CaptureStore(engine).count(model)
    finally:
        engine.dispose()


NOW = 100_000.0
"""The clock of the quality tests (UTC seconds)."""


def row(
    prediction: Any,
    label: Any,
    *,
    ts: float = NOW - 60.0,
    delay: float | None = 10.0,
    proba: dict[str, float] | None = None,
    model: str = "houses",
    version: int = 1,
) -> CapturedRow:
    return CapturedRow(
        model=model,
        version=version,
        request_id=f"r{ts}",
        row=0,
        ts=ts,
        transport="rest",
        latency_ms=1.0,
        inputs={},
        prediction=prediction,
        probabilities=proba,
        label=label,
        labelled=None if delay is None else ts + delay,
    )
