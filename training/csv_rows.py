"""A chunk of a CSV table -> float64 rows in the encoding the runtimes take, by the service's rules.

The service validates each JSON value with a pydantic model built from the manifest
(serving/codecs/schemas.py); checking a million CSV rows that way would cost a Python call per
value, so this module applies the same rules to whole columns with numpy:

- a numeric value must be a finite number; an integer value a whole number within +-2**53;
  a boolean true/false or 1/0 (any case, as the training CSV reader accepts them);
- a categorical value must be one of the training categories (after stripping surrounding
  spaces, as training did): an unseen category is refused, as the service refuses it;
- an empty cell (or another of training's missing-value markers, such as ``NA`` or ``?``) is a
  missing value, refused unless the feature was nullable in training;
- values outside the training range are scored, and counted (the service predicts them too,
  with a warning).

A refused row is not scored; each of its problems becomes an :class:`RowErrors` entry.
The encoding is the one of serving.execution.runtime: booleans 0/1, categorical values their
index in the manifest's categories, missing values NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from serving.store import Feature, FeatureKind

FloatArray = npt.NDArray[np.float64]
MAX_EXACT_INT = 2**53
"""As serving/codecs/schemas.py: integers travel as float64, exact only up to 2**53."""
_BOOLEAN_TEXT = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


@dataclass(frozen=True)
class RowErrors:
    """Problems found in a chunk: parallel arrays, one entry per (row, column) problem."""

    rows: npt.NDArray[np.int64]
    """Positions in the chunk (0-based)."""
    columns: list[str]
    reasons: list[str]


@dataclass(frozen=True)
class EncodedChunk:
    rows: FloatArray
    """Every row of the chunk, encoded (refused rows hold arbitrary values: do not score them)."""
    refused: npt.NDArray[np.bool_]
    """True for the rows with at least one problem."""
    errors: RowErrors
    out_of_range: npt.NDArray[np.int64]
    """Per feature: how many accepted rows have a value outside the training range."""


def read_dtypes(features: list[Feature]) -> dict[str, Any]:
    """dtypes to pass to ``pandas.read_csv``: categorical columns stay text (so "01" stays
    "01"); the other columns are parsed as numbers by pandas, and checked here."""
    return {f.name: str for f in features if f.kind == FeatureKind.CATEGORICAL}


def _numbers(column: pd.Series[Any]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(values as float64, cells that hold text which is no number)."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    parsed = pd.to_numeric(column, errors="coerce")
    values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, column.notna().to_numpy() & np.isnan(values)


def _booleans(column: pd.Series[Any]) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(values as 0/1/NaN, cells that are no boolean)."""
    if pd.api.types.is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    if pd.api.types.is_numeric_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isnan(values) & (values != 0.0) & (values != 1.0)
        return values, bad
    mapped = column.astype(str).str.strip().str.lower().map(_BOOLEAN_TEXT)
    values = mapped.to_numpy(dtype=np.float64, na_value=np.nan)
    present = column.notna().to_numpy()
    return np.where(present, values, np.nan), present & np.isnan(values)


def _shown(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


class _Refusals:
    """The problems found so far in a chunk, and which rows they refuse."""

    def __init__(self, n: int) -> None:
        self.refused = np.zeros(n, dtype=bool)
        self.rows: list[npt.NDArray[np.int64]] = []
        self.columns: list[str] = []
        self.reasons: list[str] = []

    def add(self, mask: npt.NDArray[np.bool_], name: str, reason: Any) -> None:
        """``reason``: one text for every flagged row, or a function of the row position."""
        positions = np.flatnonzero(mask)
        if not len(positions):
            return
        self.refused[positions] = True
        self.rows.append(positions.astype(np.int64))
        self.columns.extend([name] * len(positions))
        if callable(reason):
            self.reasons.extend(reason(int(p)) for p in positions)
        else:
            self.reasons.extend([reason] * len(positions))

    def errors(self) -> RowErrors:
        order = np.concatenate(self.rows) if self.rows else np.zeros(0, dtype=np.int64)
        return RowErrors(order, self.columns, self.reasons)


def _categorical(
    column: pd.Series[Any], f: Feature, refuse: _Refusals
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(category indexes, missing cells); unseen categories refused."""
    text = column.astype("string").str.strip()
    codes = pd.Index(f.categories or []).get_indexer(pd.Index(text)).astype(np.float64)
    missing = text.isna().to_numpy()
    unseen = (codes < 0) & ~missing
    refuse.add(
        unseen, f.name, lambda p, t=text: f"category {_shown(t.iloc[p])} was not seen in training"
    )
    codes[missing] = np.nan
    return codes, missing


def _scalar(
    column: pd.Series[Any], f: Feature, refuse: _Refusals
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(values of a boolean, integer or float feature, missing cells); bad values refused."""
    if f.kind == FeatureKind.BOOLEAN:
        values, bad = _booleans(column)
        refuse.add(bad, f.name, lambda p, c=column: f"{_shown(c.iloc[p])} is not a boolean")
    else:
        values, bad = _numbers(column)
        refuse.add(bad, f.name, lambda p, c=column: f"{_shown(c.iloc[p])} is not a number")
        refuse.add(np.isinf(values), f.name, "not a finite number")
        if f.kind == FeatureKind.INTEGER:
            finite = np.isfinite(values)
            fractional = finite & (values != np.round(values))
            refuse.add(fractional, f.name, "not a whole number")
            refuse.add(finite & (np.abs(values) > MAX_EXACT_INT), f.name, "beyond +-2**53")
    return values, np.isnan(values) & ~bad


def _outside(values: FloatArray, f: Feature) -> int:
    """How many values lie outside the feature's training range (NaN compares False)."""
    if f.min is None or f.max is None:
        return 0
    return int(np.count_nonzero((values < f.min) | (values > f.max)))


def encode_chunk(frame: pd.DataFrame, features: list[Feature]) -> EncodedChunk:
    """Check and encode ``frame`` (one column per feature, any other columns ignored)."""
    rows = np.empty((len(frame), len(features)), dtype=np.float64)
    refuse = _Refusals(len(frame))
    out_of_range = np.zeros(len(features), dtype=np.int64)
    for i, f in enumerate(features):
        column = frame[f.name]
        if f.kind == FeatureKind.CATEGORICAL:
            values, missing = _categorical(column, f, refuse)
        else:
            values, missing = _scalar(column, f, refuse)
            out_of_range[i] = _outside(values, f)
        if not f.nullable:
            refuse.add(missing, f.name, "missing value (not allowed: none in training)")
        rows[:, i] = values
    refused = refuse.refused
    if refused.any():  # out of range counts the accepted rows only
        for i, f in enumerate(features):
            out_of_range[i] -= _outside(rows[refused, i], f)
    return EncodedChunk(rows, refused, refuse.errors(), out_of_range)
