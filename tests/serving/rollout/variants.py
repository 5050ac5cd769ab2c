"""Candidate versions of iris for experiments: a differently regularised model (its answers
differ from production's on some rows), published without being promoted."""

from __future__ import annotations

import io

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_iris

from serving.store import ModelStore
from tests.serving.artifacts import publish_copy


def iris_rows(n: int, seed: int = 0) -> list[list[float]]:
    """``n`` distinct rows spread over iris's ranges (rounded as a client would send them)."""
    rng = np.random.default_rng(seed)
    low = np.array([4.3, 2.0, 1.0, 0.1])
    high = np.array([7.9, 4.4, 6.9, 2.5])
    rows: list[list[float]] = np.round(rng.uniform(low, high, size=(n, 4)), 3).tolist()
    return rows


def publish_variant(store: ModelStore, C: float = 0.02) -> int:
    """Publish iris v1's pipeline refitted with regularisation ``C`` as the next version."""
    manifest, estimator = store.load_model("iris", 1)
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = manifest.feature_names
    labels = np.asarray(data.target_names)[data.target]
    model = clone(estimator).set_params(model__C=C).fit(frame.to_numpy(), labels)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return publish_copy(
        store, "iris", store, "iris", 1, model_bytes=buffer.getvalue(), with_onnx=False
    )
