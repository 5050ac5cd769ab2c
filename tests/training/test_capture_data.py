"""Captured rows as training data: refused when they do not fit the production schema,
de-duplicated by (request_id, row), counted either way."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from serving.capture.records import Label
from serving.store import Feature, FeatureKind, ModelStore
from tests.training.conftest import quiet
from tests.training.traffic import START, captured, iris_rows, write_iris_traffic, write_rows
from training.capture_data import iso, traffic_dataset
from training.errors import DataError
from training.run import train
from training.spec import shipped_spec


@pytest.fixture
def iris(store: ModelStore) -> ModelStore:
    train(shipped_spec("iris"), store, echo=quiet)
    return store


def test_bad_rows_are_refused_and_counted_and_duplicates_dropped(
    iris: ModelStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    written = write_iris_traffic(iris, url, labelled=80)
    manifest = iris.manifest("iris", 1)
    classes = [str(c) for c in manifest.target.classes or []]
    X, _ = iris_rows()
    late = START + 5_000
    renamed = manifest.model_copy(
        update={
            "version": 7,
            "features": [
                *manifest.features[:-1],
                Feature(name="petal_area", kind=FeatureKind.NUMERIC),
            ],
        }
    )
    with_null = X[:1].copy()
    with_null[0, 2] = np.nan
    records = [
        captured(renamed, "old-schema", X[:3], late, classes),  # inputs of another version
        captured(manifest, "tulip", X[3:4], late, classes),  # a class the model never had
        captured(manifest, "number", X[4:5], late, classes),  # a number for a class
        captured(manifest, "null", with_null, late, classes),  # null, never missing in training
        captured(manifest, "req-0", X[:2], late + 1, classes),  # req-0 captured again, later
    ]
    labels = [
        *(Label("old-schema", i, "setosa") for i in range(3)),
        Label("tulip", 0, "tulip"),
        Label("number", 0, 2),
        Label("null", 0, "setosa"),
    ]
    write_rows(url, records, labels, "iris")

    spec = shipped_spec("iris").with_overrides({"capture": {"use": "only"}})
    data, facts = traffic_dataset(spec, iris, url)

    assert facts.read == 80 + 3 + 3 + 2  # the second req-0 is joined to the same labels
    assert facts.duplicates == 2
    assert facts.used == 80 == len(data.X) == len(data.y)
    assert facts.refused == {
        "inputs are not the current features (missing ['petal_width_cm'], unknown "
        "['petal_area'])": 3,
        "label is not one of the classes ['setosa', 'versicolor', 'virginica']": 2,
        "feature 'petal_length_cm' is null, which the current schema refuses": 1,
    }
    # The newest capture of a duplicated key is the one kept.
    assert facts.first == START + 2
    assert facts.last == late + 1
    assert data.split_by is not None
    assert sorted(data.split_by) == sorted([*written.ts[2:], late + 1, late + 1])
    assert list(data.X.columns) == manifest.feature_names
    assert data.X.dtypes.eq("float64").all()
    assert set(data.y) <= set(classes)
    assert any("refused 3 captured row(s)" in w for w in data.warnings)
    assert facts.to_dict()["last_prediction"] == iso(late + 1)
    assert "3 row(s): inputs are not the current features" in " ".join(facts.lines())


def test_all_rows_refused_is_the_too_few_error_with_the_reasons(
    iris: ModelStore, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    manifest = iris.manifest("iris", 1)
    classes = [str(c) for c in manifest.target.classes or []]
    X, _ = iris_rows()
    records = [captured(manifest, "r", X[:60], START, classes)]
    write_rows(url, records, [Label("r", i, "tulip") for i in range(60)], "iris")
    spec = shipped_spec("iris").with_overrides({"capture": {"use": "only"}})
    with pytest.raises(DataError, match=r"only 0 usable .*60 refused: 60 label is not one"):
        traffic_dataset(spec, iris, url)


@pytest.mark.parametrize(
    ("inputs", "label", "reason"),
    [
        ({"size": 50.0, "rooms": 3, "garden": True, "city": "lyon"}, "cheap", None),
        ({"size": None, "rooms": 3.0, "garden": False, "city": "paris"}, "dear", None),
        ({"size": 50.0, "rooms": 3, "garden": True}, "cheap", "missing ['city']"),
        ({"size": "big", "rooms": 3, "garden": True, "city": "lyon"}, "cheap", "'size' is not a"),
        ({"size": 1.0, "rooms": 3.5, "garden": True, "city": "lyon"}, "cheap", "whole number"),
        ({"size": 1.0, "rooms": None, "garden": True, "city": "lyon"}, "cheap", "'rooms' is null"),
        ({"size": 1.0, "rooms": 3, "garden": 1, "city": "lyon"}, "cheap", "not true/false"),
        ({"size": 1.0, "rooms": 3, "garden": True, "city": "nice"}, "cheap", "categories"),
        ({"size": 1.0, "rooms": 3, "garden": True, "city": "lyon"}, "pricey", "not one of"),
        ({"size": 1.0, "rooms": 3, "garden": True, "city": "lyon"}, True, "not one of"),
    ],
)
def test_row_rules(inputs: dict[str, object], label: object, reason: str | None) -> None:
    from tests.serving.capture.records import manifest
    from training.capture_data import _RefusedError, _usable

    if reason is None:
        values, kept = _usable(manifest(), inputs, label)
        assert kept == label
        assert len(values) == 4
        return
    with pytest.raises(_RefusedError, match=re.escape(reason)):
        _usable(manifest(), inputs, label)


def test_regression_and_numeric_class_labels() -> None:
    from serving.store import Target
    from tests.serving.capture.records import manifest, regressor
    from training.capture_data import _RefusedError, _usable

    inputs = {"size": 1.0, "rooms": 3, "garden": True, "city": "lyon"}
    assert _usable(regressor(), inputs, 12)[1] == 12.0
    for bad in (True, "12", float("nan")):
        with pytest.raises(_RefusedError, match="not a finite number"):
            _usable(regressor(), inputs, bad)
    numeric = manifest().model_copy(update={"target": Target(name="n", classes=[0, 1, 2])})
    assert _usable(numeric, inputs, 2.0)[1] == 2
    for bad in ("2", True):
        with pytest.raises(_RefusedError, match="not one of"):
            _usable(numeric, inputs, bad)
