"""Training on labelled traffic: where it is split, and how the gate compares with production.

The holdout is the most recent labelled traffic (``capture.holdout`` of the captured rows by
prediction time), never a random draw: the question a retrain answers is whether the candidate
predicts what the service sees now better than production does. The folds are time-ordered on
the older rows (the spec's dataset rows first when they are included), so the candidate and its
trivial baseline are compared fold by fold as for any spec.

Production is compared *as served*, not refitted: refitting its pipeline on the same traffic
would train the same estimator on the same rows, which measures nothing. Both models are fixed,
so the holdout is cut into ``split.folds`` time-ordered chunks and the primary metric compared
chunk by chunk with the paired t-test without the overlap correction (the chunks share no
rows, and nothing is fitted on them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from serving.store import Manifest, ModelStore, Task
from training import gate
from training.capture_data import TrafficFacts, traffic_dataset
from training.datasets import Dataset
from training.errors import DataError
from training.evaluate import FoldScores, evaluate
from training.fitting import Scores, Split, primary_metric, split_dataset, stage
from training.folds import Splits, check_classes
from training.gate import Comparison
from training.spec import METRICS_HIGHER_IS_BETTER, Spec

Echo = Callable[[str], None]


def traffic_splits(spec: Spec, task: Task, data: Dataset, n_original: int) -> Splits:
    """The newest traffic as the holdout (in time order), time-ordered folds on the rest;
    ``data`` holds the spec's dataset rows (``n_original``) first, then the traffic."""
    from sklearn.model_selection import TimeSeriesSplit

    assert data.split_by is not None
    n = len(data.y)
    times = data.split_by.to_numpy()[n_original:]
    # The dataset's rows have no time: they come first, in a seeded shuffle (a file sorted by
    # class would leave the first time-ordered folds with one class).
    order = np.concatenate(
        [
            np.random.default_rng(spec.split.seed).permutation(n_original),
            n_original + np.argsort(times, kind="stable"),
        ]
    )
    n_test = max(1, math.ceil((n - n_original) * spec.capture.holdout))
    k = spec.split.folds
    if n_test < 2 * k:
        raise DataError(
            f"the holdout of the newest {spec.capture.holdout:.0%} of the traffic has {n_test} "
            f"rows, too few to compare with production over {k} time-ordered chunks of at "
            "least 2 rows: label more traffic, or raise capture.holdout or lower split.folds"
        )
    train, test = order[: n - n_test], order[n - n_test :]
    if len(train) < 2 * k:
        raise DataError(
            f"{len(train)} training rows are too few for {k}-fold cross-validation; "
            "label more traffic or lower split.folds"
        )
    folds = [
        (np.asarray(f), np.asarray(v))
        for f, v in TimeSeriesSplit(n_splits=k).split(np.arange(len(train)))
    ]
    if task == Task.CLASSIFICATION:
        check_classes(folds, data.y.to_numpy()[train], "by prediction time")
    kind = f"{k}-fold time-ordered by prediction time" + (
        " (the dataset's rows first)" if n_original else ""
    )
    return Splits(np.asarray(train), np.asarray(test), folds, kind)


def _scores(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series[Any],
    task: Task,
    k: int,
    to_input: Callable[[pd.DataFrame], Any],
) -> FoldScores:
    """``model``'s metrics on each of ``k`` consecutive chunks of the (time-ordered) holdout."""
    per_chunk = [
        evaluate(model, to_input(X.iloc[rows]), y.iloc[rows], task).metrics
        for rows in np.array_split(np.arange(len(X)), k)
    ]
    common = set.intersection(*(set(m) for m in per_chunk))
    return {name: [m[name] for m in per_chunk] for name in sorted(common)}


def versus_served(
    spec: Spec, store: ModelStore, scores: Scores, split: Split, echo: Echo
) -> tuple[Manifest, Comparison, FoldScores]:
    """Production as served against the candidate on the newest traffic, chunk by chunk."""
    candidate, to_input = scores.model, split.model_input
    X_test, y_test = split.X_test, split.y_test
    current = store.production(spec.name)
    assert current is not None  # traffic is only read for a model with a production version
    manifest, served = store.load_model(spec.name, current)
    task = manifest.task
    primary = primary_metric(spec, task)
    k = spec.split.folds

    def served_input(frame: pd.DataFrame) -> Any:
        dataframe = manifest.input_format == "dataframe"
        return frame if dataframe else frame.to_numpy(dtype=np.float64)

    ours = _scores(candidate, X_test, y_test, task, k, to_input)
    theirs = _scores(served, X_test, y_test, task, k, served_input)
    higher = METRICS_HIGHER_IS_BETTER[primary]
    against = f"production v{current} as served"
    if primary in ours and primary in theirs:
        compared = gate.paired(
            against,
            primary,
            ours[primary],
            theirs[primary],
            higher_is_better=higher,
            margin=spec.evaluation.tolerance,
            significance=spec.evaluation.significance,
            validate_to_fit=0.0,
        )
        method = f"paired over {k} time-ordered chunks of the newest traffic, both models fixed"
        compared = dataclasses.replace(compared, method=method)
    else:
        mine = evaluate(candidate, to_input(X_test), y_test, task).metrics.get(primary)
        old = evaluate(served, served_input(X_test), y_test, task).metrics.get(primary)
        if mine is None or old is None:
            raise DataError(
                f"{primary} cannot be computed for production on the newest traffic (roc_auc "
                "needs every class there): label more traffic or choose another primary metric"
            )
        compared = gate.holdout_only(
            against, primary, mine, old, higher_is_better=higher, margin=spec.evaluation.tolerance
        )
        compared = dataclasses.replace(
            compared, method=f"the newest traffic as one holdout: {primary} not on every chunk"
        )
    figures = ", ".join(f"{m}={np.mean(v):.4f}" for m, v in sorted(theirs.items()))
    echo(f"    production v{current} as served on the newest traffic: {figures}")
    return manifest, compared, theirs


def load_traffic_split(
    spec: Spec, task: Task, store: ModelStore, url: str, echo: Echo
) -> tuple[Split, TrafficFacts]:
    """The labelled traffic (and the dataset, if the spec says so) split for training."""
    with stage(echo, "load"):
        data, facts = traffic_dataset(spec, store, url)
        for line in facts.lines()[:1]:
            echo(f"    {line}")
        for warning in data.warnings:
            echo(f"    warning: {warning}")
    split = split_dataset(
        spec, task, data, lambda: traffic_splits(spec, task, data, facts.original_rows)
    )
    facts.holdout_rows = len(split.X_test)
    assert data.split_by is not None
    facts.holdout_from = float(data.split_by.iloc[split.splits.test].min())
    echo(f"    holdout: {facts.holdout()} ({facts.holdout_rows} rows)")
    return split, facts
