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


def encode_chunk(frame: pd.DataFrame, features: list[Feature]) -> EncodedChunk:
    """Check and encode ``frame`` (one column per feature, any other columns ignored)."""
    n = len(frame)
    rows = np.empty((n, len(features)), dtype=np.float64)
    refused = np.zeros(n, dtype=bool)
    error_rows: list[npt.NDArray[np.int64]] = []
    columns: list[str] = []
    reasons: list[str] = []
    out_of_range = np.zeros(len(features), dtype=np.int64)

    def refuse(mask: npt.NDArray[np.bool_], name: str, reason: Any) -> None:
        """``reason``: one text for every flagged row, or a function of the row position."""
        positions = np.flatnonzero(mask)
        if not len(positions):
            return
        refused[positions] = True
        error_rows.append(positions.astype(np.int64))
        columns.extend([name] * len(positions))
        if callable(reason):
            reasons.extend(reason(int(p)) for p in positions)
        else:
            reasons.extend([reason] * len(positions))

    for i, f in enumerate(features):
        column = frame[f.name]
        if f.kind == FeatureKind.CATEGORICAL:
            text = column.astype("string").str.strip()
            codes = pd.Index(f.categories or []).get_indexer(pd.Index(text)).astype(np.float64)
            missing = text.isna().to_numpy()
            unseen = (codes < 0) & ~missing
            refuse(
                unseen,
                f.name,
                lambda p, t=text: f"category {_shown(t.iloc[p])} was not seen in training",
            )
            codes[missing] = np.nan
            values = codes
        else:
            if f.kind == FeatureKind.BOOLEAN:
                values, bad = _booleans(column)
                refuse(bad, f.name, lambda p, c=column: f"{_shown(c.iloc[p])} is not a boolean")
            else:
                values, bad = _numbers(column)
                refuse(bad, f.name, lambda p, c=column: f"{_shown(c.iloc[p])} is not a number")
                refuse(np.isinf(values), f.name, "not a finite number")
                if f.kind == FeatureKind.INTEGER:
                    finite = np.isfinite(values)
                    fractional = finite & (values != np.round(values))
                    refuse(fractional, f.name, "not a whole number")
                    refuse(finite & (np.abs(values) > MAX_EXACT_INT), f.name, "beyond +-2**53")
            missing = np.isnan(values) & ~bad
            if f.min is not None and f.max is not None:
                outside = (values < f.min) | (values > f.max)  # NaN compares False
                out_of_range[i] = int(np.count_nonzero(outside))
        if not f.nullable:
            refuse(missing, f.name, "missing value (not allowed: none in training)")
        rows[:, i] = values

    if refused.any():
        for i, f in enumerate(features):
            if f.min is not None and f.max is not None:
                column_values = rows[refused, i]
                out_of_range[i] -= int(
                    np.count_nonzero((column_values < f.min) | (column_values > f.max))
                )
    order = np.concatenate(error_rows) if error_rows else np.zeros(0, dtype=np.int64)
    return EncodedChunk(rows, refused, RowErrors(order, columns, reasons), out_of_range)
