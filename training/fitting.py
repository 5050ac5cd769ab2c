"""Fitting a candidate and scoring it: load and split the data, fit (or search), score on the
folds and the holdout, and find the trivial baseline the candidate must beat."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from serving.store import Feature, FeatureKind, Task
from training.contenders import baselines
from training.datasets import Dataset, load_dataset
from training.errors import DataError
from training.evaluate import Evaluation, FoldScores, cross_validate, evaluate, summary
from training.folds import Splits, make_splits
from training.pipeline import build_pipeline
from training.provenance import feature_schema
from training.records import spread
from training.search import SearchOutcome, run_search
from training.spec import CLASSIFICATION_METRICS, METRICS_HIGHER_IS_BETTER, Spec, SpecError

Echo = Callable[[str], None]


@contextlib.contextmanager
def stage(echo: Echo, label: str) -> Iterator[None]:
    echo(f"  {label} ...")
    start = time.perf_counter()
    yield
    echo(f"  {label}: done in {time.perf_counter() - start:.2f}s")


@dataclass(frozen=True)
class Split:
    """The loaded dataset, split for training, and how the model takes its rows."""

    data: Dataset
    splits: Splits
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_fit: np.ndarray[Any, Any]
    y_test: pd.Series[Any]
    features: list[Feature]
    input_format: Literal["ndarray", "dataframe"]

    def model_input(self, frame: pd.DataFrame) -> Any:
        return frame if self.input_format == "dataframe" else frame.to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class Scores:
    """The fitted candidate, what it scored, and the trivial baseline it must beat."""

    model: Any
    searched: SearchOutcome | None
    cv: FoldScores
    evaluation: Evaluation
    strategy: str
    """Which trivial baseline (the best one on the primary metric)."""
    baseline_cv: FoldScores
    metrics: dict[str, float]


def primary_metric(spec: Spec, task: Task) -> str:
    primary = spec.evaluation.primary_metric or (
        "f1_macro" if task == Task.CLASSIFICATION else "rmse"
    )
    if (primary in CLASSIFICATION_METRICS) != (task == Task.CLASSIFICATION):
        raise SpecError(f"primary metric {primary!r} does not apply to {task.value}")
    return primary


def load_split(spec: Spec, task: Task, echo: Echo) -> Split:
    with stage(echo, "load"):
        data = load_dataset(spec)
        echo(f"    {len(data.X)} rows, {len(data.kinds)} features from {data.origin}")
        for warning in data.warnings:
            echo(f"    warning: {warning}")
    return split_dataset(spec, task, data, lambda: make_splits(spec, data, task))


def split_dataset(spec: Spec, task: Task, data: Dataset, make: Callable[[], Splits]) -> Split:
    """``data`` split by ``make`` (after checking a classifier has two classes to learn)."""
    if task == Task.CLASSIFICATION:
        counts = data.y.value_counts()
        if len(counts) < 2:
            raise DataError(f"target {spec.dataset.target!r} has a single class; nothing to learn")
    splits = make()
    X_train = data.X.iloc[splits.train]
    has_categorical = any(k == FeatureKind.CATEGORICAL for k in data.kinds.values())
    return Split(
        data=data,
        splits=splits,
        X_train=X_train,
        X_test=data.X.iloc[splits.test],
        y_fit=data.y.iloc[splits.train].to_numpy(),
        y_test=data.y.iloc[splits.test],
        features=feature_schema(data, X_train),
        input_format="dataframe" if has_categorical else "ndarray",
    )


def _fit(spec: Spec, split: Split, primary: str, echo: Echo) -> tuple[Any, SearchOutcome | None]:
    nullable = {f.name for f in split.features if f.nullable}
    with stage(echo, "fit"):
        model = build_pipeline(spec, split.data.kinds, nullable)
        if spec.search is None:
            model.fit(split.model_input(split.X_train), split.y_fit)
            return model, None
        searched = run_search(
            spec.search,
            model,
            split.model_input(split.X_train),
            split.y_fit,
            split.splits.folds,
            primary=primary,
        )
        echo(
            f"    {spec.search.kind} search over {len(searched.table)} candidates by "
            f"{searched.scoring}: best {searched.best_params}"
        )
        return searched.model, searched


def fit_and_score(spec: Spec, task: Task, split: Split, primary: str, echo: Echo) -> Scores:
    model, searched = _fit(spec, split, primary, echo)
    folds, to_input = split.splits.folds, split.model_input
    with stage(echo, "cross-validate"):
        cv = cross_validate(model, split.X_train, split.y_fit, folds, task, to_input)
        if primary not in cv:
            raise SpecError(f"primary metric {primary!r} could not be computed on every fold")
        echo(f"    {split.splits.kind}: " + spread(cv))

    with stage(echo, "evaluate"):
        evaluation = evaluate(model, to_input(split.X_test), split.y_test, task)
        if primary not in evaluation.metrics:
            raise SpecError(f"primary metric {primary!r} could not be computed on the holdout")
        echo(
            "    holdout: "
            + ", ".join(f"{k}={v:.4f}" for k, v in sorted(evaluation.metrics.items()))
        )
    strategy, baseline_cv, baseline_holdout = _baseline(spec, task, split, primary, echo)
    metrics: dict[str, float] = {
        **evaluation.metrics,
        **summary(cv),
        **{f"baseline_{k}": v for k, v in baseline_holdout.items()},
        **summary(baseline_cv, prefix="baseline_cv_"),
    }
    return Scores(model, searched, cv, evaluation, strategy, baseline_cv, metrics)


def _baseline(
    spec: Spec, task: Task, split: Split, primary: str, echo: Echo
) -> tuple[str, FoldScores, dict[str, float]]:
    """The best trivial baseline on the primary metric: its name, fold and holdout scores."""
    to_input = split.model_input
    with stage(echo, "baseline"):
        higher = METRICS_HIGHER_IS_BETTER[primary]
        tried = {
            label: cross_validate(
                dummy, split.X_train, split.y_fit, split.splits.folds, task, to_input
            )
            for label, dummy in baselines(task, spec.split.seed).items()
        }
        usable = {k: v for k, v in tried.items() if primary in v}
        strategy = (max if higher else min)(usable, key=lambda k: _mean(usable[k][primary]))
        baseline_cv = usable[strategy]
        dummy = baselines(task, spec.split.seed)[strategy].fit(to_input(split.X_train), split.y_fit)
        holdout = evaluate(dummy, to_input(split.X_test), split.y_test, task).metrics
        echo(f"    {strategy}: " + spread(baseline_cv))
    return strategy, baseline_cv, holdout


def _mean(values: list[float]) -> float:
    return float(np.mean(values))
