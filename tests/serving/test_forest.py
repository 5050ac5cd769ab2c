"""The compiled forest gives the same bits as scikit-learn, and declines what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from serving.forest import compile_estimator
from serving.runtime import LoadedModel
from serving.store import ModelStore


def _uniform(trained_store: ModelStore, n: int, seed: int) -> np.ndarray:
    manifest = trained_store.manifest("breast_cancer", 1)
    lows = np.array([f.min for f in manifest.features])
    highs = np.array([f.max for f in manifest.features])
    rows: np.ndarray = lows + np.random.default_rng(seed).random((n, len(lows))) * (highs - lows)
    return rows


def test_trained_forest_is_compiled_and_identical(trained_store: ModelStore) -> None:
    manifest, estimator = trained_store.load_model("breast_cancer", 1)
    loaded = LoadedModel(manifest, estimator)
    assert loaded.compiled
    for n in (1, 7, 300, 5000):  # the largest goes to scikit-learn
        rows = _uniform(trained_store, n, seed=n)
        result = loaded.predict(rows, True)
        assert np.array_equal(result.predictions, estimator.predict(rows))
        assert result.probabilities is not None
        assert np.array_equal(result.probabilities, estimator.predict_proba(rows))


@pytest.mark.parametrize("scaled", [False, True])
def test_other_forests_and_pipelines(scaled: bool) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y_class = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)
    y_value = X[:, 2] * 3 + X[:, 3]
    pre = [("scale", StandardScaler())] if scaled else []
    classifier = Pipeline([*pre, ("model", ExtraTreesClassifier(20, random_state=0))])
    regressor = Pipeline([*pre, ("model", RandomForestRegressor(15, random_state=0))])
    classifier.fit(X, y_class)
    regressor.fit(X, y_value)
    sample = rng.normal(size=(200, 5))
    fast_classifier = compile_estimator(classifier, sample)
    fast_regressor = compile_estimator(regressor, sample)
    assert fast_classifier is not None
    assert fast_regressor is not None
    new = rng.normal(size=(64, 5)) * 2
    assert np.array_equal(fast_classifier.predict_proba(new), classifier.predict_proba(new))
    assert np.array_equal(fast_classifier.predict(new), classifier.predict(new))
    assert np.array_equal(fast_regressor.predict(new), regressor.predict(new))
    missing = new.copy()
    missing[0, 0] = np.nan  # handled by scikit-learn's own missing-value rules
    assert np.array_equal(fast_regressor.predict(missing), regressor.predict(missing))


def test_other_estimators_are_not_compiled() -> None:
    X = np.random.default_rng(0).normal(size=(50, 3))
    model = Pipeline([("model", LogisticRegression())]).fit(X, X[:, 0] > 0)
    assert compile_estimator(model, X) is None
