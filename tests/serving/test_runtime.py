"""Rows encoded for transport and decoded for the estimator give the model's own answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from serving.dataplane import RowEncoder
from serving.runtime import LoadedModel
from serving.store import ModelStore

RECORDS = [
    {
        "tenure_months": 3,
        "monthly_charges": 99.0,
        "support_calls": 5,
        "senior_citizen": True,
        "contract": "month-to-month",
        "internet_service": "fiber",
        "payment_method": "electronic-check",
    },
    {
        "tenure_months": 60,
        "monthly_charges": 20.25,
        "support_calls": 0,
        "senior_citizen": False,
        "contract": "two-year",
        "internet_service": "none",
        "payment_method": "credit-card",
    },
]


def test_dataframe_model_round_trip(trained_store: ModelStore) -> None:
    manifest, estimator = trained_store.load_model("churn", 1)
    encoded = RowEncoder(manifest).records(RECORDS)
    assert encoded.dtype == np.float64
    assert encoded.shape == (2, len(manifest.features))
    loaded = LoadedModel(manifest, estimator)
    frame = loaded.estimator_input(encoded)
    assert list(frame.columns) == manifest.feature_names
    assert frame["contract"].tolist() == ["month-to-month", "two-year"]
    expected_frame = pd.DataFrame(RECORDS).astype(
        {"tenure_months": float, "support_calls": float, "senior_citizen": float}
    )
    result = loaded.predict(encoded, True)
    assert result.predictions.tolist() == estimator.predict(expected_frame).tolist()
    assert result.probabilities is not None
    assert np.array_equal(result.probabilities, estimator.predict_proba(expected_frame))


def test_positional_rows_encode_like_records(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("churn", 1)
    encoder = RowEncoder(manifest)
    positional = encoder.rows([tuple(r.values()) for r in RECORDS])
    assert np.array_equal(positional, encoder.records(RECORDS))


def test_ndarray_model_gets_the_float_array(trained_store: ModelStore) -> None:
    manifest, estimator = trained_store.load_model("iris", 1)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    loaded = LoadedModel(manifest, estimator)
    assert loaded.estimator_input(rows) is rows
    assert loaded.predict(rows, False).predictions.tolist() == estimator.predict(rows).tolist()
