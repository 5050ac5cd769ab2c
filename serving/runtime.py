"""Turn encoded rows into estimator input and call the estimator.

Rows travel between processes as one float64 2-D array in manifest feature order: numeric,
integer and boolean values as numbers (booleans 0/1), categorical values as the index of the
category in the manifest, missing values as NaN. This keeps inter-process messages small and
cheap to pickle; the worker turns the array back into what the estimator was trained on.
Used by pool workers and by inline mode alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.store import FeatureKind, Manifest

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    """Outputs for a batch of rows: labels or values, and class probabilities if asked."""

    predictions: npt.NDArray[Any]
    probabilities: FloatArray | None


class LoadedModel:
    """An unpickled estimator with what is needed to feed it encoded rows."""

    def __init__(self, manifest: Manifest, estimator: Any) -> None:
        self.manifest = manifest
        self.estimator = estimator
        self._predictor = self._compiled() or estimator
        self._dataframe = manifest.input_format == "dataframe"
        self._columns = manifest.feature_names
        # Categorical columns: index -> object array of labels (with None for missing at the end).
        self._categorical = {
            i: np.array([*(f.categories or []), None], dtype=object)
            for i, f in enumerate(manifest.features)
            if f.kind == FeatureKind.CATEGORICAL
        }

    def _compiled(self) -> Any:
        """A faster, result-identical stand-in for tree ensembles (serving.forest), or None."""
        if self.manifest.input_format != "ndarray":
            return None
        from serving.forest import compile_estimator

        lows = np.array([f.min if f.min is not None else 0.0 for f in self.manifest.features])
        highs = np.array([f.max if f.max is not None else 1.0 for f in self.manifest.features])
        sample = lows + np.random.default_rng(0).random((256, len(lows))) * (highs - lows)
        return compile_estimator(self.estimator, sample)

    @property
    def compiled(self) -> bool:
        """True when predictions come from the compiled forest (for small batches)."""
        return self._predictor is not self.estimator

    def estimator_input(self, rows: FloatArray) -> Any:
        """The float64 array itself, or a DataFrame typed like the training table."""
        if not self._dataframe:
            return rows
        import pandas as pd

        data: dict[str, Any] = {}
        for i, name in enumerate(self._columns):
            column = rows[:, i]
            labels = self._categorical.get(i)
            if labels is None:
                data[name] = column
            else:
                missing = np.isnan(column)
                index = np.where(missing, len(labels) - 1, np.nan_to_num(column)).astype(np.intp)
                data[name] = labels[index]
        return pd.DataFrame(data, columns=self._columns)

    def predict(self, rows: FloatArray, want_probabilities: bool) -> Prediction:
        """Predict a batch; probabilities only for classifiers and only when asked."""
        features = self.estimator_input(rows)
        predictions = np.asarray(self._predictor.predict(features))
        probabilities = None
        if want_probabilities:
            probabilities = np.asarray(self._predictor.predict_proba(features), dtype=np.float64)
        return Prediction(predictions, probabilities)
