"""Load a spec's dataset into a feature table and a target, with the feature schema.

Every problem with the data is raised as DataError with a message naming the file, column and
row, before anything is fitted or written.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.store import FeatureKind, Task
from training.errors import DataError
from training.spec import Spec

_BUNDLED = {
    "iris": ("load_iris", "species"),
    "breast_cancer": ("load_breast_cancer", "diagnosis"),
    "diabetes": ("load_diabetes", "disease_progression"),
    "wine": ("load_wine", "cultivar"),
}
_MAX_CLASSES_FOR_INT_TARGET = 20
# What counts as "no value" in a CSV cell: pandas' documented default ``na_values`` plus "?"
# (common in exported data). Spelled out so a pandas upgrade cannot change what goes missing,
# and read with keep_default_na=False so these and only these become missing.
MISSING_MARKERS: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
        "?",
    }
)
_ROWS_SHOWN = 5


@dataclass(frozen=True)
class Dataset:
    X: pd.DataFrame
    """Feature columns in model order; categorical as str objects, everything else float64."""
    y: pd.Series[Any]
    kinds: dict[str, FeatureKind]
    origin: str
    fingerprint: str
    """sha256 of the feature table plus target, canonically serialised (CSV, fixed format)."""
    split_by: pd.Series[Any] | None = None
    """The spec's group or time column (split.group_column / split.time_column), not a feature."""
    warnings: tuple[str, ...] = ()
    """Things that are legal but probably not meant (e.g. an id column used as a category)."""


def snake(name: str) -> str:
    """'sepal length (cm)' -> 'sepal_length_cm': feature names that are valid identifiers."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def _load_bundled(source: str) -> tuple[pd.DataFrame, str]:
    name = source.removeprefix("sklearn:")
    if name not in _BUNDLED:
        raise DataError(
            f"unknown bundled dataset {source!r}; available: "
            + ", ".join(f"sklearn:{n}" for n in sorted(_BUNDLED))
        )
    import sklearn.datasets

    loader, target_name = _BUNDLED[name]
    bunch = getattr(sklearn.datasets, loader)(as_frame=True)
    frame = bunch.frame.rename(columns=snake)
    target = frame.pop("target")
    if hasattr(bunch, "target_names") and bunch.target_names is not None:
        # Serve class labels as people say them ("setosa"), not as integer codes.
        target = pd.Series(np.asarray(bunch.target_names)[target.to_numpy()], index=frame.index)
    frame[target_name] = target
    return frame, f"scikit-learn bundled dataset {name}"


@dataclass(frozen=True)
class _Raw:
    frame: pd.DataFrame
    origin: str
    text: pd.DataFrame | None = None
    """The CSV's cells as written (stripped strings), to say which held a missing-value marker."""


def _load_csv(path: Path) -> _Raw:
    if path.is_dir():
        raise DataError(f"data path {path} is a directory, not a CSV file")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        frame = pd.read_csv(
            path,
            skipinitialspace=True,
            keep_default_na=False,
            na_values=sorted(MISSING_MARKERS),
        )
        text = pd.read_csv(
            path, skipinitialspace=True, keep_default_na=False, na_filter=False, dtype=str
        )
        # pandas renames a repeated header ("a", "a.1"); a repeated column is a mistake.
        with path.open(newline="", encoding="utf-8") as fh:
            header = [c.strip() for c in next(csv.reader(fh), [])]
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"data file {path} is not a readable CSV: {exc}") from None
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"data file {path} repeats column(s) {repeated} in its header")
    return _Raw(frame, str(path), text.apply(lambda c: c.str.strip()))


def load_raw(spec: Spec) -> tuple[pd.DataFrame, str]:
    raw = _load(spec)
    return raw.frame, raw.origin


def _load(spec: Spec) -> _Raw:
    path = spec.dataset_path()
    if path is not None:
        return _load_csv(path)
    assert spec.dataset.source is not None
    return _Raw(*_load_bundled(spec.dataset.source))


def _check_markers(spec: Spec, raw: _Raw, column: str, kind: FeatureKind) -> str | None:
    """Refuse missing-value markers in a numeric, integer or boolean column the spec does not
    allow them in; otherwise return the note that says how many were read as missing."""
    if raw.text is None:
        return None
    cells = raw.text[column]
    marked = cells.isin(MISSING_MARKERS).to_numpy()
    if not marked.any():
        return None
    count = int(marked.sum())
    rows = [int(i) + 1 for i in np.flatnonzero(marked)[:_ROWS_SHOWN]]
    shown = ", ".join(map(str, rows)) + (", ..." if count > len(rows) else "")
    values = cells[marked].value_counts()
    spelled = ", ".join(f"{v!r} x{n}" for v, n in values.items())
    found = f"{count} missing-value marker(s) ({spelled}) in {raw.origin}, at row(s) {shown}"
    if kind == FeatureKind.CATEGORICAL:
        return f"categorical feature {column!r}: {found}; read as missing (its own category)"
    if column in spec.features.allow_missing:
        return (
            f"{kind.value} feature {column!r}: {found}; read as missing and imputed "
            f"({spec.preprocessing.impute}) as features.allow_missing says"
        )
    raise DataError(
        f"{kind.value} feature {column!r} has {found}. Nothing is read as missing unless the "
        f"spec allows it: fix the data, or add it to the spec's features.allow_missing "
        f'(allow_missing = ["{column}"]) to impute those values'
    )


def infer_task(y: pd.Series[Any]) -> Task:
    """Text or boolean targets, and integer targets with few values, are classification."""
    if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
        return Task.CLASSIFICATION
    values = y.dropna()
    if (values == values.round()).all() and values.nunique() <= _MAX_CLASSES_FOR_INT_TARGET:
        return Task.CLASSIFICATION
    return Task.REGRESSION


def _infer_kind(column: pd.Series[Any]) -> FeatureKind:
    if pd.api.types.is_bool_dtype(column):
        return FeatureKind.BOOLEAN
    if pd.api.types.is_integer_dtype(column):
        return FeatureKind.INTEGER
    if pd.api.types.is_numeric_dtype(column):
        non_null = column.dropna()
        # pandas reads integer columns with gaps as float; keep them integers.
        if len(non_null) and column.isna().any() and (non_null == non_null.round()).all():
            return FeatureKind.INTEGER
        return FeatureKind.NUMERIC
    values = column.dropna().astype(str).str.strip().str.lower()
    if len(values) and values.isin({"true", "false"}).all():
        return FeatureKind.BOOLEAN
    parsed = pd.to_numeric(values, errors="coerce")
    if len(values) and parsed.notna().mean() >= 0.5:
        bad = column.notna() & pd.to_numeric(column, errors="coerce").isna()
        raise DataError(
            f"column {column.name!r} looks numeric but has non-numeric values, e.g. "
            f"{_first(column, bad)}; fix the data, or declare it categorical in the spec "
            "(features.kinds)"
        )
    return FeatureKind.CATEGORICAL


def _first(column: pd.Series[Any], bad: pd.Series[bool]) -> str:
    """'<value> at row <n>' for the first row flagged in ``bad``."""
    pos = int(np.argmax(bad.to_numpy()))
    return f"{column.iloc[pos]!r} at row {pos + 1}"


def _coerce(column: pd.Series[Any], kind: FeatureKind) -> pd.Series[Any]:
    """Cast a feature to the representation the model is fitted on (see Manifest.input_format)."""
    name = column.name
    if kind == FeatureKind.CATEGORICAL:
        return column.map(lambda v: None if pd.isna(v) else str(v).strip()).astype(object)
    if kind == FeatureKind.BOOLEAN:
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            values = column.astype(float)
        else:
            lowered = column.astype(str).str.strip().str.lower()
            values = lowered.map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0})
            values[column.isna()] = np.nan
        bad = values.notna() & ~values.isin([0.0, 1.0])
        bad |= column.notna() & values.isna()
        if bad.any():
            raise DataError(
                f"boolean feature {name!r} has a non-boolean value {_first(column, bad)}"
            )
        return values.astype("float64")
    numeric = pd.to_numeric(column, errors="coerce")
    bad = column.notna() & numeric.isna()
    if bad.any():
        raise DataError(
            f"{kind.value} feature {name!r} has a non-numeric value {_first(column, bad)}"
        )
    if not np.isfinite(numeric.dropna().to_numpy(dtype="float64")).all():
        raise DataError(f"feature {name!r} has infinite values")
    if kind == FeatureKind.INTEGER:
        non_null = numeric.dropna()
        if not (non_null == non_null.round()).all():
            fractional = numeric.notna() & (numeric != numeric.round())
            raise DataError(
                f"integer feature {name!r} has a fractional value {_first(column, fractional)}"
            )
    return numeric.astype("float64")


def fingerprint(X: pd.DataFrame, y: pd.Series[Any]) -> str:
    table = X.copy()
    table["__target__"] = y.to_numpy()
    text = table.to_csv(index=False, float_format="%.17g", lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_dataset(spec: Spec) -> Dataset:
    """The spec's dataset, checked (target, features, split column, size) and each feature
    coerced to its kind, with notes on what looks wrong but trains."""
    raw = _load(spec)
    frame, origin = raw.frame, raw.origin
    target = spec.dataset.target
    y = _target(frame, target, origin)
    columns, split_column = _feature_columns(spec, frame, origin)
    if len(frame) < 10:
        raise DataError(f"dataset {origin} has only {len(frame)} rows; need at least 10")
    X, kinds, warnings = _features(spec, raw, columns)
    if isinstance(y.dtype, pd.StringDtype) or y.dtype == object:
        y = y.astype(str)
    X = X.reset_index(drop=True)
    y = y.reset_index(drop=True).rename(target)
    split_by = None if split_column is None else frame[split_column].reset_index(drop=True)
    return Dataset(
        X=X,
        y=y,
        kinds=kinds,
        origin=origin,
        fingerprint=fingerprint(X, y),
        warnings=warnings,
        split_by=split_by,
    )


def _target(frame: pd.DataFrame, target: str, origin: str) -> pd.Series[Any]:
    """The target column, refused when missing or with missing values (or with no rows)."""
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"dataset {origin} has no rows")
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} not found in {origin}; columns are: "
            + ", ".join(map(str, frame.columns))
        )
    y = frame[target]
    if y.isna().any():
        first = int(np.argmax(y.isna().to_numpy())) + 1
        raise DataError(
            f"target {target!r} has {int(y.isna().sum())} missing value(s) in {origin}, "
            f"first at row {first}; drop or fill those rows"
        )
    return y


def _feature_columns(spec: Spec, frame: pd.DataFrame, origin: str) -> tuple[list[Any], str | None]:
    """The feature columns (included, less the excluded and the split column) and the split
    column, checked against the frame and the spec."""
    target = spec.dataset.target
    if spec.features.include is not None:
        columns = list(spec.features.include)
    else:
        columns = [c for c in frame.columns if c != target]
    split_column = spec.split.group_column or spec.split.time_column
    columns = [c for c in columns if c not in {*spec.features.exclude, split_column}]
    if split_column is not None and split_column not in frame.columns:
        raise DataError(f"split column {split_column!r} not found in {origin}")
    if split_column is not None and frame[split_column].isna().any():
        raise DataError(f"split column {split_column!r} has missing values in {origin}")
    unknown = [c for c in spec.features.allow_missing if c not in columns]
    if unknown:
        raise DataError(f"features.allow_missing names {unknown}, which are not features")
    missing = [c for c in [*columns, *spec.features.kinds] if c not in frame.columns]
    if missing:
        raise DataError(f"feature column(s) {missing} not found in {origin}")
    if target in columns:
        raise DataError(f"target {target!r} is also listed as a feature")
    if not columns:
        raise DataError(f"dataset {origin} has no feature columns besides the target")
    return columns, split_column


def _features(
    spec: Spec, raw: _Raw, columns: list[Any]
) -> tuple[pd.DataFrame, dict[str, FeatureKind], tuple[str, ...]]:
    """The feature columns coerced to their kinds (given or inferred), the kinds, and notes:
    missing-value markers found, categorical columns that look like ids or free text."""
    frame = raw.frame
    kinds: dict[str, FeatureKind] = {}
    notes: list[str] = []
    X = pd.DataFrame(index=frame.index)
    for col in columns:
        kind = spec.features.kinds.get(col) or _infer_kind(frame[col])
        note = _check_markers(spec, raw, col, kind)
        if note is not None:
            notes.append(note)
        kinds[str(col)] = kind
        X[str(col)] = _coerce(frame[col], kind)
    notes.extend(
        f"categorical feature {col!r} has {X[col].nunique()} distinct values in {len(X)} rows; "
        "if it is an id or free text, exclude it (features.exclude)"
        for col, kind in kinds.items()
        if kind == FeatureKind.CATEGORICAL and X[col].nunique() > max(50, len(X) // 2)
    )
    return X, kinds, tuple(notes)


def infer_csv_task(path: Path, target: str) -> Task:
    """The task an ad-hoc CSV's target implies (see infer_task)."""
    raw = _load_csv(path)
    frame, origin = raw.frame, raw.origin
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} not found in {origin}; columns are: "
            + ", ".join(map(str, frame.columns))
        )
    return infer_task(frame[target].dropna())
