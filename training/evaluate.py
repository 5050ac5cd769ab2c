"""Holdout metrics for classifiers and regressors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.store import Task


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
