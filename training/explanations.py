"""The explanation background of a new version, and the model card's global summary of it.

The background (serving.explain) is computed from the training rows, written as
``explain.json`` beside the model (hashed in the manifest like every file) and recorded in the
manifest's ``explain`` field. A model no exact method supports gets ``status: unsupported`` with
the reason, and is still trained and served: only ``"explain"`` requests are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.explain import Background, Explainer, UnsupportedExplanation, background
from serving.store import EXPLAIN_FILE, Explanations
from training.importance import Importances

_SUMMARY_ROWS = 2000
"""Holdout rows the global summary explains (enough for a stable mean, bounded in time)."""


def write_background(
    model: Any, X_train: Any, feature_names: list[str], folder: Path
) -> tuple[Explanations, Background | None]:
    """Compute the background of the fitted ``model`` from its training rows and write it into
    the version ``folder``; the manifest entry and the background (None when unsupported)."""
    try:
        found = background(model, X_train, feature_names)
    except UnsupportedExplanation as exc:
        return Explanations(status="unsupported", reason=str(exc)), None
    except ImportError as exc:  # tree models need shap, an optional extra
        reason = (
            f"{type(model).__name__} is explained with shap, which was not installed when this "
            f"version was trained ({exc}); pip install 'servewell[explain]' and retrain"
        )
        return Explanations(status="unsupported", reason=reason), None
    (folder / EXPLAIN_FILE).write_text(
        json.dumps(found.to_json(), indent=1) + "\n", encoding="utf-8"
    )
    entry = Explanations(status="ok", method=found.method, space=found.space, file=EXPLAIN_FILE)
    return entry, found


def holdout_summary(model: Any, found: Background, holdout: Any) -> Importances:
    """Mean absolute contribution of each input feature over (up to 2000) holdout rows, summed
    over the outputs (classes): how much each feature moves the model's answers."""
    rows = holdout.iloc[:_SUMMARY_ROWS] if hasattr(holdout, "iloc") else holdout[:_SUMMARY_ROWS]
    _, contributions = Explainer(model, found).explain(rows)
    outputs = contributions.shape[2]
    if found.classes is not None and len(found.classes) == 2 and outputs == 2:
        contributions = contributions[:, :, 1:]  # class 0's are the negation: counted once
    magnitude = np.abs(contributions).mean(axis=0).sum(axis=1)
    kind = f"mean |contribution| over {len(contributions)} holdout rows ({found.space})"
    return Importances(
        kind, {n: float(v) for n, v in zip(found.feature_names, magnitude, strict=True)}
    )
