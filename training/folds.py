"""Where a dataset is split: the holdout, then cross-validation folds on the training part.

The same positions serve the candidate, its baseline, production's re-evaluation and a
hyper-parameter search, so every comparison the gate makes is paired fold by fold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.store import Task
from training.datasets import Dataset
from training.errors import DataError
from training.spec import Spec

Positions = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Splits:
    train: Positions
    """Dataset rows of the training part, in the order the folds index them."""
    test: Positions
    """Dataset rows of the holdout."""
    folds: list[tuple[Positions, Positions]]
    """(fit, validate) positions within the training part."""
    kind: str
    """How the folds were made, for reports: e.g. "5-fold stratified"."""

    @property
    def validate_to_fit(self) -> float:
        """Mean ratio of validation to fitting rows, for the corrected paired test."""
        return float(np.mean([len(v) / len(f) for f, v in self.folds]))


def make_splits(spec: Spec, data: Dataset, task: Task) -> Splits:
    """Holdout and folds as the spec's split section says (random, grouped or time-ordered)."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    n = len(data.y)
    positions = np.arange(n)
    split = spec.split
    if split.time_column is not None:
        assert data.split_by is not None
        ordered = positions[np.argsort(data.split_by.to_numpy(), kind="stable")]
        n_test = max(1, math.ceil(n * split.test_size))
        train, test = ordered[: n - n_test], ordered[n - n_test :]
    elif split.group_column is not None:
        assert data.split_by is not None
        splitter = GroupShuffleSplit(n_splits=1, test_size=split.test_size, random_state=split.seed)
        train, test = next(splitter.split(positions, groups=data.split_by.to_numpy()))
    else:
        # Splitting positions draws the same rows as splitting the frames would, so holdouts
        # stay what they were before folds existed.
        train, test = train_test_split(
            positions,
            test_size=split.test_size,
            random_state=split.seed,
            stratify=_stratify(spec, data.y.to_numpy(), task),
        )
    folds, kind = _folds(spec, data, task, np.asarray(train))
    return Splits(np.asarray(train), np.asarray(test), folds, kind)


def _stratify(spec: Spec, y: npt.NDArray[Any], task: Task) -> npt.NDArray[Any] | None:
    if task != Task.CLASSIFICATION or not spec.split.stratify:
        return None
    _, counts = np.unique(y.astype(str), return_counts=True)
    return y if counts.min() >= 2 else None  # a class with one row cannot be split both ways


def _folds(
    spec: Spec, data: Dataset, task: Task, train: Positions
) -> tuple[list[tuple[Positions, Positions]], str]:
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold, TimeSeriesSplit

    k = spec.split.folds
    if len(train) < 2 * k:
        raise DataError(
            f"{len(train)} training rows are too few for {k}-fold cross-validation; "
            "lower split.folds or add rows"
        )
    rows = np.arange(len(train))
    y = data.y.to_numpy()[train]
    if spec.split.time_column is not None:
        splits = TimeSeriesSplit(n_splits=k).split(rows)
        kind = f"{k}-fold time-ordered by {spec.split.time_column!r}"
    elif spec.split.group_column is not None:
        assert data.split_by is not None
        groups = data.split_by.to_numpy()[train]
        if len(np.unique(groups)) < k:
            raise DataError(
                f"split.group_column {spec.split.group_column!r} has fewer than {k} groups in "
                "the training part; lower split.folds"
            )
        splits = GroupKFold(n_splits=k).split(rows, groups=groups)
        kind = f"{k}-fold grouped by {spec.split.group_column!r}"
    else:
        stratify = _stratify(spec, y, task)
        _, counts = np.unique(y.astype(str), return_counts=True)
        if stratify is not None and counts.min() >= k:
            splits = StratifiedKFold(k, shuffle=True, random_state=spec.split.seed).split(rows, y)
            kind = f"{k}-fold stratified"
        else:
            splits = KFold(k, shuffle=True, random_state=spec.split.seed).split(rows)
            kind = f"{k}-fold"
    folds = [(np.asarray(f), np.asarray(v)) for f, v in splits]
    if task == Task.CLASSIFICATION and spec.split.time_column is not None:
        check_classes(folds, y, f"by {spec.split.time_column!r}")
    return folds, kind


def check_classes(
    folds: list[tuple[Positions, Positions]], y: npt.NDArray[Any], ordered: str
) -> None:
    """Time-ordered folds train on the earliest rows: when those are all of one class (traffic
    that came class by class) no classifier can be fitted, and scikit-learn's message would
    not say which fold or why."""
    for i, (fit, _) in enumerate(folds, 1):
        classes = np.unique(y[fit].astype(str))
        if len(classes) < 2:
            raise DataError(
                f"time-ordered fold {i} of {len(folds)} ({ordered}) trains on "
                f"{len(fit)} rows of one class only ({str(classes[0])!r}): the earliest rows are "
                "all one class; lower split.folds or use more varied rows"
            )
