"""Each bad input gets a clear message, and nothing is written to the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.errors import DataError, EstimatorError
from training.run import train
from training.spec import SpecError, load_spec, shipped_spec


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def _spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(body)
    return path


def _csv_spec(tmp_path: Path, csv: Path, target: str = "y", extra: str = "") -> Path:
    return _spec(
        tmp_path,
        f'name = "adhoc"\n[dataset]\npath = "{csv}"\ntarget = "{target}"\n'
        '[estimator]\nclass = "sklearn.linear_model.LogisticRegression"\n' + extra,
    )


GOOD_ROWS = "".join(f"{i},{i % 3},{'a' if i % 2 else 'b'}\n" for i in range(30))


@pytest.mark.parametrize(
    ("csv_text", "target", "message"),
    [
        ("x,z,y\n" + GOOD_ROWS, "label", "target column 'label' not found"),
        ("x,z,y\n", "y", "has no rows"),
        ("", "y", "is empty"),
        (
            "x,z,y\n1,2,a\n" + "oops,1,a\n" + GOOD_ROWS,
            "y",
            "non-numeric values, e.g. 'oops' at row 2",
        ),
        ("x,z,y\n1,2,\n" + GOOD_ROWS, "y", "'y' has 1 missing value(s)"),
    ],
    ids=["missing-target", "empty-data", "empty-file", "non-numeric", "nan-target"],
)
def test_bad_data_is_rejected_before_writing(
    tmp_path: Path, store: ModelStore, csv_text: str, target: str, message: str
) -> None:
    spec = load_spec(_csv_spec(tmp_path, _csv(tmp_path, csv_text), target))
    with pytest.raises(DataError, match=_escape(message)):
        train(spec, store, echo=quiet)
    assert not store.root.exists() or not list(store.root.rglob("*"))


def test_declared_numeric_feature_with_text_names_the_row(
    tmp_path: Path, store: ModelStore
) -> None:
    csv = _csv(tmp_path, "x,z,y\n" + GOOD_ROWS + "1,abc,b\n")
    spec = load_spec(_csv_spec(tmp_path, csv, extra='[features]\nkinds = { z = "numeric" }\n'))
    with pytest.raises(
        DataError, match="numeric feature 'z' has a non-numeric value 'abc' at row 31"
    ):
        train(spec, store, echo=quiet)
    assert store.names() == []


def test_missing_data_file(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(_csv_spec(tmp_path, tmp_path / "nope.csv"))
    with pytest.raises(DataError, match="data file not found"):
        train(spec, store, echo=quiet)
    assert store.names() == []


def test_unknown_estimator_import_path(tmp_path: Path, store: ModelStore) -> None:
    spec = shipped_spec("iris").with_overrides({"estimator": {"class": "sklearn.linear.Nope"}})
    with pytest.raises(EstimatorError, match=r"cannot import module 'sklearn\.linear'"):
        train(spec, store, echo=quiet)
    spec = shipped_spec("iris").with_overrides({"estimator": {"class": "sklearn.svm.Nope"}})
    with pytest.raises(EstimatorError, match="has no attribute 'Nope'"):
        train(spec, store, echo=quiet)
    assert store.names() == []


def test_invalid_estimator_params(store: ModelStore) -> None:
    spec = shipped_spec("iris").with_overrides({"estimator": {"params": {"colour": "red"}}})
    with pytest.raises(EstimatorError, match="invalid params"):
        train(spec, store, echo=quiet)


def test_invalid_spec_keys_are_named(tmp_path: Path) -> None:
    path = _spec(
        tmp_path,
        'name = "x"\nlearning_rate = 3\n[dataset]\nsource = "sklearn:iris"\ntarget = "species"\n'
        '[estimator]\nclass = "sklearn.svm.SVC"\n[split]\ntest_sise = 0.3\n',
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "learning_rate: Extra inputs are not permitted" in str(info.value)
    assert "split.test_sise: Extra inputs are not permitted" in str(info.value)


def test_spec_that_is_not_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(_spec(tmp_path, "name = = 3"))


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.toml")


def test_unsafe_model_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="invalid model name"):
        shipped_spec("iris").with_overrides({"name": "../escape"})


def test_failure_while_writing_leaves_nothing(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("training.run.write_report", explode)
    with pytest.raises(OSError, match="disk full"):
        train(shipped_spec("iris"), store, echo=quiet)
    assert store.versions("iris") == []
    assert store.production("iris") is None
    assert list((store.root / "iris").iterdir()) == []  # no staging leftovers


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_repeated_header_column_is_rejected(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(_csv_spec(tmp_path, _csv(tmp_path, "x,x,y\n" + GOOD_ROWS)))
    with pytest.raises(DataError, match=r"repeats column\(s\) \['x'\]"):
        train(spec, store, echo=quiet)
    assert not store.root.exists() or not list(store.root.rglob("*"))


def test_directory_as_data_file(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(_csv_spec(tmp_path, tmp_path))
    with pytest.raises(DataError, match="is a directory"):
        train(spec, store, echo=quiet)


def test_id_like_category_is_warned_about(tmp_path: Path, store: ModelStore) -> None:
    rows = "".join(f"{i},id-{i},{'a' if i % 2 else 'b'}\n" for i in range(120))
    spec = load_spec(_csv_spec(tmp_path, _csv(tmp_path, "x,customer,y\n" + rows)))
    lines: list[str] = []
    train(spec, store, echo=lines.append)
    assert any("'customer' has 120 distinct values" in line for line in lines)


MARKED_ROWS = "".join(
    f"{'n/a' if i in (3, 7) else ('NA' if i == 11 else i)},{i % 3},{'a' if i % 2 else 'b'}\n"
    for i in range(40)
)


def test_missing_markers_in_a_numeric_column_are_refused_by_default(
    tmp_path: Path, store: ModelStore
) -> None:
    spec = load_spec(_csv_spec(tmp_path, _csv(tmp_path, "x,z,y\n" + MARKED_ROWS)))
    with pytest.raises(DataError) as info:
        train(spec, store, echo=quiet)
    message = str(info.value)
    assert "feature 'x' has 3 missing-value marker(s) ('n/a' x2, 'NA' x1)" in message
    assert "at row(s) 4, 8, 12" in message
    assert 'allow_missing = ["x"]' in message
    assert store.names() == []


def test_question_mark_is_a_missing_marker_too(tmp_path: Path, store: ModelStore) -> None:
    csv = _csv(tmp_path, "x,z,y\n" + GOOD_ROWS + "?,1,a\n")
    with pytest.raises(DataError, match=r"feature 'x' has 1 missing-value marker\(s\) \('\?' x1\)"):
        train(load_spec(_csv_spec(tmp_path, csv)), store, echo=quiet)


def test_allowed_missing_markers_are_reported_and_imputed(
    tmp_path: Path, store: ModelStore
) -> None:
    csv = _csv(tmp_path, "x,z,y\n" + MARKED_ROWS)
    spec = load_spec(_csv_spec(tmp_path, csv, extra='[features]\nallow_missing = ["x"]\n'))
    lines: list[str] = []
    result = train(spec, store, echo=lines.append)
    assert any("'x': 3 missing-value marker(s)" in line and "imputed" in line for line in lines)
    x = next(f for f in result.manifest.features if f.name == "x")
    assert x.nullable


def test_missing_marker_in_a_categorical_column_is_reported(
    tmp_path: Path, store: ModelStore
) -> None:
    rows = "".join(
        f"{i},{'N/A' if i == 5 else ('red' if i % 2 else 'blue')},{i % 2}\n" for i in range(40)
    )
    spec = load_spec(_csv_spec(tmp_path, _csv(tmp_path, "x,colour,y\n" + rows)))
    lines: list[str] = []
    train(spec, store, echo=lines.append)
    assert any("categorical feature 'colour': 1 missing-value marker(s)" in line for line in lines)
