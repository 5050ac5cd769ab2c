"""Metrics for classifiers and regressors: on the holdout, and per cross-validation fold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from serving.store import Task

SCORERS = {
    "accuracy": "accuracy",
    "f1_macro": "f1_macro",
    "roc_auc": "roc_auc",
    "r2": "r2",
    "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error",
}
"""Each metric as a scikit-learn scorer (errors negated there: higher is always better)."""


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    y_true: npt.NDArray[Any]
    y_pred: npt.NDArray[Any]
    proba: npt.NDArray[np.float64] | None
    classes: list[Any] | None


def evaluate(model: Any, X: Any, y: Any, task: Task) -> Evaluation:
    from sklearn import metrics as skm

    y_true = np.asarray(y)
    y_pred = np.asarray(model.predict(X))
    if task == Task.REGRESSION:
        values = {
            "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
            "mae": float(skm.mean_absolute_error(y_true, y_pred)),
            "r2": float(skm.r2_score(y_true, y_pred)),
        }
        return Evaluation(values, y_true, y_pred, None, None)

    classes = list(model.classes_)
    values = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    proba: npt.NDArray[np.float64] | None = None
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
        present = set(np.unique(y_true))
        # ROC-AUC needs every class in the holdout; report it only when that holds.
        if len(classes) == 2 and present == set(classes):
            values["roc_auc"] = float(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
        elif len(classes) > 2 and present == set(classes):
            values["roc_auc"] = float(
                skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
            )
    return Evaluation(values, y_true, y_pred, proba, classes)


FoldScores = dict[str, list[float]]
"""Metric name -> its value on each fold, in fold order (metrics computable on every fold)."""


def cross_validate(
    estimator: Any,
    X: pd.DataFrame,
    y: npt.NDArray[Any],
    folds: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    task: Task,
    to_input: Callable[[pd.DataFrame], Any],
) -> FoldScores:
    """Fit a fresh clone of ``estimator`` on each fold's fitting rows and score the rest."""
    from sklearn.base import clone

    per_fold: list[dict[str, float]] = []
    for fit_rows, validate_rows in folds:
        model = clone(estimator)
        model.fit(to_input(X.iloc[fit_rows]), y[fit_rows])
        held_out = to_input(X.iloc[validate_rows])
        per_fold.append(evaluate(model, held_out, y[validate_rows], task).metrics)
    common = set.intersection(*(set(m) for m in per_fold)) if per_fold else set()
    return {name: [m[name] for m in per_fold] for name in sorted(common)}


def summary(scores: FoldScores, prefix: str = "cv_") -> dict[str, float]:
    """``cv_<metric>_mean`` and ``cv_<metric>_std`` (sample std over folds) for the manifest."""
    out: dict[str, float] = {}
    for name, values in scores.items():
        out[f"{prefix}{name}_mean"] = float(np.mean(values))
        out[f"{prefix}{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out
