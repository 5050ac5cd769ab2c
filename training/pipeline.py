"""Build the scikit-learn pipeline a spec describes: preprocessing + estimator, one object."""

from __future__ import annotations

import importlib
from typing import Any

from serving.store import FeatureKind, Task
from training.errors import EstimatorError
from training.spec import Spec


def import_estimator(path: str) -> type[Any]:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise EstimatorError(
            f"estimator {path!r} is not an import path like 'package.module.Class'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorError(
            f"cannot import module {module_name!r} for estimator {path!r}: {exc}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise EstimatorError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(cls, type) or not hasattr(cls, "fit") or not hasattr(cls, "predict"):
        raise EstimatorError(f"{path!r} is not an estimator class with fit and predict")
    return cls


def task_of(estimator_cls: type[Any]) -> Task:
    from sklearn.base import is_classifier, is_regressor

    try:
        instance = estimator_cls()
    except TypeError:
        instance = None
    if instance is not None and is_classifier(instance):
        return Task.CLASSIFICATION
    if instance is not None and is_regressor(instance):
        return Task.REGRESSION
    raise EstimatorError(
        f"cannot tell whether {estimator_cls.__name__} is a classifier or a regressor; "
        "set evaluation.task in the spec"
    )


def build_pipeline(spec: Spec, kinds: dict[str, FeatureKind], nullable: set[str]) -> Any:
    """The estimator wrapped with its preprocessing.

    Numeric-only data is fitted on a float64 array (input_format "ndarray"), which keeps
    per-call overhead low at serving time; data with categorical features is fitted on a
    DataFrame and routed by column name through a ColumnTransformer.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cls = import_estimator(spec.estimator.class_)
    try:
        estimator = cls(**spec.estimator.params)
    except TypeError as exc:
        raise EstimatorError(f"invalid params for {spec.estimator.class_}: {exc}") from None
    prep = spec.preprocessing
    numeric = [n for n, k in kinds.items() if k != FeatureKind.CATEGORICAL]
    categorical = [n for n, k in kinds.items() if k == FeatureKind.CATEGORICAL]

    numeric_steps: list[tuple[str, Any]] = []
    if nullable & set(numeric):
        numeric_steps.append(("impute", SimpleImputer(strategy=prep.impute)))
    if prep.scale and numeric:
        numeric_steps.append(("scale", StandardScaler()))

    if not categorical:
        return Pipeline([*numeric_steps, ("model", estimator)])

    categorical_steps: list[tuple[str, Any]] = []
    if nullable & set(categorical):
        categorical_steps.append(
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__"))
        )
    if prep.one_hot:
        categorical_steps.append(
            ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))
        )
    else:
        raise EstimatorError(
            "categorical features need preprocessing.one_hot = true (no other encoding yet)"
        )
    transformers: list[tuple[str, Any, list[str]]] = [
        ("categorical", Pipeline(categorical_steps), categorical)
    ]
    if numeric:
        transformers.insert(
            0, ("numeric", Pipeline(numeric_steps) if numeric_steps else "passthrough", numeric)
        )
    return Pipeline(
        [("prep", ColumnTransformer(transformers, remainder="drop")), ("model", estimator)]
    )
