"""Feature importances named by the model's input features, not by its transformed columns.

The main measure is permutation importance on the holdout: how much the primary metric drops
when one input column is shuffled, the pipeline (preprocessing included) predicting as it does
in service. It answers "how much does the model rely on this input", in the metric's units, and
treats a categorical input as one feature however many one-hot columns it becomes.

Impurity-based importances (trees) and coefficient sizes (linear models) are computed on the
transformed columns and favour numeric columns with many distinct values; they are kept as a
secondary view, summed back onto the input feature each transformed column came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.evaluate import SCORERS

PERMUTATION_REPEATS = 5
"""Shuffles per feature: enough for a mean and a spread on small holdouts, few enough that a
100-tree forest on 30 features adds a couple of seconds to training."""


@dataclass(frozen=True)
class Importances:
    kind: str
    """What the numbers measure, for a plot title or a table header."""
    values: dict[str, float]
    """By input feature, in feature order."""
    spread: dict[str, float] | None = None
    """Standard deviation over the shuffles (permutation importance only)."""

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.values.items(), key=lambda kv: kv[1], reverse=True)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "importances": self.values}
        if self.spread is not None:
            out["std"] = self.spread
        return out


def permutation(
    model: Any,
    X: Any,
    y: Any,
    feature_names: list[str],
    metric: str,
    *,
    n_classes: int | None = None,
    seed: int = 0,
) -> Importances:
    """Permutation importance of every input column of ``X`` (the pipeline's own input: a
    float array in feature order or a DataFrame with the feature columns) on ``metric``."""
    from sklearn.inspection import permutation_importance

    scoring = SCORERS[metric]
    if scoring == "roc_auc" and n_classes is not None and n_classes > 2:
        scoring = "roc_auc_ovr"
    result = permutation_importance(
        model, X, y, scoring=scoring, n_repeats=PERMUTATION_REPEATS, random_state=seed, n_jobs=1
    )
    means = np.asarray(result.importances_mean, dtype=float)
    stds = np.asarray(result.importances_std, dtype=float)
    return Importances(
        kind=f"drop in holdout {metric} when the feature is shuffled",
        values=dict(zip(feature_names, means.tolist(), strict=True)),
        spread=dict(zip(feature_names, stds.tolist(), strict=True)),
    )


def _input_of_each_column(model: Any, feature_names: list[str]) -> list[str] | None:
    """For each column the pipeline's preprocessing outputs, the input feature it comes from
    (None when the structure is not one this knows: the caller then skips the view)."""
    if not hasattr(model, "steps") or len(model.steps) == 1:
        return feature_names
    prep = model[:-1]
    from sklearn.compose import ColumnTransformer

    transformer = prep[-1] if len(prep) == 1 else None
    if not isinstance(transformer, ColumnTransformer):
        # Scaling and imputing keep one column per input, in order.
        try:
            width = len(prep.get_feature_names_out(feature_names))
        except (AttributeError, ValueError):
            return None
        return feature_names if width == len(feature_names) else None
    sources: list[str] = []
    for name, step, columns in transformer.transformers_:
        if name == "remainder" or step == "drop":
            continue
        encoder = _one_hot_of(step)
        if encoder is None:
            sources.extend(columns)
        else:
            for column, categories in zip(columns, encoder.categories_, strict=True):
                sources.extend([column] * len(categories))
    return sources


def _one_hot_of(step: Any) -> Any:
    from sklearn.preprocessing import OneHotEncoder

    parts = [s for _, s in step.steps] if hasattr(step, "steps") else [step]
    for part in parts:
        if isinstance(part, OneHotEncoder) and part.drop is None:
            return part
    return None


def built_in(model: Any, feature_names: list[str]) -> Importances | None:
    """The final estimator's own importances (impurity or |coefficient|), summed per input
    feature; None when it has neither, or the pipeline's columns cannot be traced back."""
    final = model[-1] if hasattr(model, "steps") else model
    if hasattr(final, "feature_importances_"):
        kind = "impurity-based importance, summed over each input's columns"
        values = np.asarray(final.feature_importances_, dtype=float)
    elif hasattr(final, "coef_"):
        kind = "mean |coefficient| on preprocessed columns, summed over each input's columns"
        values = np.abs(np.atleast_2d(np.asarray(final.coef_, dtype=float))).mean(axis=0)
    else:
        return None
    sources = _input_of_each_column(model, feature_names)
    if sources is None or len(sources) != len(values):
        return None
    totals = dict.fromkeys(feature_names, 0.0)
    for source, value in zip(sources, values.tolist(), strict=True):
        totals[source] += value
    return Importances(kind=kind, values=totals)
