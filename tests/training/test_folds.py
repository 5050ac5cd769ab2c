from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.store import Task
from training.datasets import load_dataset
from training.errors import DataError
from training.folds import make_splits
from training.spec import load_spec


def _spec(tmp_path: Path, split: str) -> Path:
    rows = "".join(f"{i},{i % 8},{(i * 7) % 11},{'a' if i % 3 else 'b'}\n" for i in range(80))
    (tmp_path / "d.csv").write_text("x,shop,day,y\n" + rows)
    path = tmp_path / "spec.toml"
    path.write_text(
        f'name = "d"\n[dataset]\npath = "{tmp_path / "d.csv"}"\ntarget = "y"\n'
        '[estimator]\nclass = "sklearn.linear_model.LogisticRegression"\n'
        f"[split]\n{split}\n"
    )
    return path


def test_grouped_splits_keep_each_group_on_one_side(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, 'group_column = "shop"\nfolds = 3'))
    data = load_dataset(spec)
    assert "shop" not in data.kinds  # the group column is not a feature
    splits = make_splits(spec, data, Task.CLASSIFICATION)
    assert data.split_by is not None
    groups = data.split_by.to_numpy()
    assert not set(groups[splits.train]) & set(groups[splits.test])
    inner = groups[splits.train]
    for fit, validate in splits.folds:
        assert not set(inner[fit]) & set(inner[validate])
    assert splits.kind == "3-fold grouped by 'shop'"


def test_time_ordered_splits_validate_on_later_rows(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, 'time_column = "day"\nfolds = 4\ntest_size = 0.25'))
    data = load_dataset(spec)
    splits = make_splits(spec, data, Task.CLASSIFICATION)
    assert data.split_by is not None
    day = data.split_by.to_numpy()
    assert day[splits.train].max() <= day[splits.test].min()
    inner = day[splits.train]
    for fit, validate in splits.folds:
        assert inner[fit].max() <= inner[validate].min()
    assert len(splits.folds) == 4


def test_default_folds_are_stratified_and_cover_the_training_part(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "folds = 4"))
    data = load_dataset(spec)
    splits = make_splits(spec, data, Task.CLASSIFICATION)
    validated = np.sort(np.concatenate([v for _, v in splits.folds]))
    assert validated.tolist() == list(range(len(splits.train)))
    assert splits.kind == "4-fold stratified"


def test_time_ordered_folds_whose_earliest_rows_are_one_class_are_a_data_error(
    tmp_path: Path,
) -> None:
    # Rows came class by class: the first fold would train on class "a" only.
    rows = "".join(f"{i},{i % 8},{i},{'a' if i < 40 else 'b'}\n" for i in range(80))
    (tmp_path / "d.csv").write_text("x,shop,day,y\n" + rows)
    spec = load_spec(_spec(tmp_path, 'time_column = "day"\nfolds = 4'))
    (tmp_path / "d.csv").write_text("x,shop,day,y\n" + rows)  # _spec wrote its own rows
    data = load_dataset(spec)
    with pytest.raises(DataError, match=r"time-ordered fold 1 of 4 .* one class only \('a'\)"):
        make_splits(spec, data, Task.CLASSIFICATION)
