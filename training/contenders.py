"""What a candidate is compared with: trivial baselines, and production refitted on the
candidate's folds (or, failing that, production's recorded scores)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from serving.store import Manifest, ModelStore, Task
from training import gate
from training.evaluate import FoldScores, cross_validate
from training.folds import Splits
from training.gate import Comparison
from training.spec import METRICS_HIGHER_IS_BETTER, Spec

Echo = Callable[[str], None]


def baselines(task: Task, seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if task == Task.REGRESSION:
        return {"mean": DummyRegressor(strategy="mean")}
    # most_frequent is the bar for accuracy (and scores every ranking metric at chance);
    # stratified guesses score higher on macro F1, where most_frequent leaves classes empty.
    return {
        "most_frequent": DummyClassifier(strategy="most_frequent"),
        "stratified": DummyClassifier(strategy="stratified", random_state=seed),
    }


def production_scores(
    store: ModelStore,
    name: str,
    signature: tuple[Task, str, list[str]],
    X_train: pd.DataFrame,
    y_train: np.ndarray[Any, Any],
    splits: Splits,
    to_input: Callable[[pd.DataFrame], Any],
    echo: Echo,
) -> tuple[Manifest | None, FoldScores | None]:
    """Production's pipeline refitted on the candidate's folds, when its inputs match."""
    current = store.production(name)
    if current is None:
        return None, None
    manifest, model = store.load_model(name, current)
    if (manifest.task, manifest.input_format, manifest.feature_names) != signature:
        echo(f"    production v{current} takes other inputs; not refitted on these folds")
        return manifest, None
    try:
        return manifest, cross_validate(
            model, X_train, y_train, splits.folds, task=manifest.task, to_input=to_input
        )
    except (ValueError, TypeError) as exc:  # e.g. missing values its pipeline never imputed
        echo(f"    production v{current} could not be refitted on these folds: {exc}")
        return manifest, None


def versus_production(
    spec: Spec,
    prod: Manifest,
    prod_scores: FoldScores | None,
    cv: FoldScores,
    metrics: dict[str, float],
    primary: str,
    splits: Splits,
) -> Comparison:
    higher = METRICS_HIGHER_IS_BETTER[primary]
    against = f"production v{prod.version}"
    margin = spec.evaluation.tolerance
    if prod_scores is not None and primary in prod_scores:
        return gate.paired(
            against,
            primary,
            cv[primary],
            prod_scores[primary],
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
            higher_is_better=higher,
            margin=margin,
        )
    mean, std = f"cv_{primary}_mean", f"cv_{primary}_std"
    if mean in prod.metrics and std in prod.metrics:
        return gate.unpaired(
            against,
            primary,
            (metrics[mean], metrics[std]),
            (prod.metrics[mean], prod.metrics[std]),
            k=len(splits.folds),
            significance=spec.evaluation.significance,
            validate_to_fit=splits.validate_to_fit,
            higher_is_better=higher,
            margin=margin,
        )
    old = prod.metrics.get(primary, float("-inf") if higher else float("inf"))
    return gate.holdout_only(
        against, primary, metrics[primary], old, higher_is_better=higher, margin=margin
    )
