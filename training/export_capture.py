"""Export a model's captured predictions, with their labels, to CSV (or Parquet with pyarrow).

One row per captured prediction, oldest first: ``request_id, row, version, ts, transport,
latency_ms``, each input feature, ``prediction``, ``probability_<class>`` per class when the
model has classes, ``label`` and ``labelled_at`` (empty when no label came). Times are ISO 8601
UTC. The feature and class columns are the model's production version's (its newest version
when none is in production; the first captured row's when the store has none), so a file has
one header even when versions differ; values of features a row lacks are empty, inputs the
header does not name are left out and counted. Rows are read and written in chunks, so memory
follows the chunk size, and the file is written under a temporary name and renamed when done.
"""

from __future__ import annotations

import csv
import importlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.store import Manifest, ModelStore, StoreError, Task
from training.capture_data import CHUNK_ROWS, iso, shown_url
from training.errors import ExportError

FIXED = ["request_id", "row", "version", "ts", "transport", "latency_ms"]


@dataclass(frozen=True)
class Columns:
    features: list[str]
    classes: list[str]
    task: Task | None

    def header(self) -> list[str]:
        return [
            *FIXED,
            *self.features,
            "prediction",
            *(f"probability_{c}" for c in self.classes),
            "label",
            "labelled_at",
        ]


@dataclass(frozen=True)
class ExportSummary:
    rows: int
    labelled: int
    dropped_inputs: int
    """Input values under a name the header does not have (features of another version)."""
    out: Path


def _schema(store: ModelStore, name: str) -> Manifest | None:
    try:
        versions = store.versions(name)
    except StoreError:
        return None
    if not versions:
        return None
    return store.manifest(name, store.production(name) or versions[-1])


def _columns(manifest: Manifest | None, first: Any) -> Columns:
    if manifest is not None:
        classes = [str(c) for c in manifest.target.classes or []]
        return Columns(manifest.feature_names, classes, manifest.task)
    probabilities = first.probabilities or {}
    return Columns(list(first.inputs), list(probabilities), None)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def _record(r: Any, columns: Columns) -> list[Any]:
    probabilities = r.probabilities or {}
    return [
        r.request_id,
        r.row,
        r.version,
        iso(r.ts),
        r.transport,
        r.latency_ms,
        *(r.inputs.get(f) for f in columns.features),
        r.prediction,
        *(probabilities.get(c) for c in columns.classes),
        r.label,
        None if r.labelled is None else iso(r.labelled),
    ]


def export_capture(
    store: ModelStore, name: str, url: str, out: Path, *, chunk_rows: int = CHUNK_ROWS
) -> ExportSummary:
    """Write every captured row of ``name`` in ``url`` to ``out`` (.csv or .parquet)."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from serving.capture.database import CaptureDatabaseError, open_engine
    from serving.capture.store import CaptureStore

    suffix = out.suffix.lower()
    if suffix not in {".csv", ".parquet"}:
        raise ExportError(f"export to .csv or .parquet, not {out.name!r}")
    if suffix == ".parquet":
        try:
            importlib.import_module("pyarrow")
        except ImportError:
            raise ExportError(
                "Parquet export needs pyarrow (pip install pyarrow); or export to a .csv file"
            ) from None
    try:
        if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).is_file():
            raise ExportError(f"no capture database at {shown_url(url)}")
        engine = open_engine(url)
    except (ArgumentError, CaptureDatabaseError) as exc:
        raise ExportError(f"unusable capture database URL: {exc}") from None
    partial = out.with_name(f".{out.name}.partial")
    try:
        chunks = CaptureStore(engine).scan(name, chunk_rows=chunk_rows)
        write = _write_parquet if suffix == ".parquet" else _write_csv
        summary = write(chunks, name, _schema(store, name), partial, out)
        os.replace(partial, out)
        return summary
    except SQLAlchemyError as exc:
        raise ExportError(f"cannot read the capture database {shown_url(url)}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
        engine.dispose()


def _first(chunks: Iterator[list[Any]], name: str) -> list[Any]:
    first = next(chunks, None)
    if not first:
        raise ExportError(f"no captured rows of {name!r}: nothing to export")
    return first


def _dropped(chunk: list[Any], columns: Columns) -> int:
    known = set(columns.features)
    return sum(len(r.inputs.keys() - known) for r in chunk)


def _write_csv(
    chunks: Iterator[list[Any]], name: str, manifest: Manifest | None, partial: Path, out: Path
) -> ExportSummary:
    first = _first(chunks, name)
    columns = _columns(manifest, first[0])
    rows = labelled = dropped = 0
    with partial.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns.header())
        for chunk in _chain(first, chunks):
            writer.writerows([_cell(v) for v in _record(r, columns)] for r in chunk)
            rows += len(chunk)
            labelled += sum(r.labelled is not None for r in chunk)
            dropped += _dropped(chunk, columns)
    return ExportSummary(rows, labelled, dropped, out)


def _chain(first: list[Any], rest: Iterator[list[Any]]) -> Iterator[list[Any]]:
    yield first
    yield from rest


def _write_parquet(
    chunks: Iterator[list[Any]], name: str, manifest: Manifest | None, partial: Path, out: Path
) -> ExportSummary:
    """As the CSV, one row group per chunk; features, predictions and labels as JSON gave
    them, in columns typed from the first chunk (strings where the kinds mix)."""
    # Imported by name: pyarrow is optional and has no type stubs here.
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")

    first = _first(chunks, name)
    columns = _columns(manifest, first[0])
    header = columns.header()
    sample = [_record(r, columns) for r in first]
    types = [_arrow_type(pa, h, [row[i] for row in sample]) for i, h in enumerate(header)]
    schema = pa.schema(list(zip(header, types, strict=True)))
    rows = labelled = dropped = 0
    with pq.ParquetWriter(str(partial), schema) as writer:
        for chunk in _chain(first, chunks):
            records = [_record(r, columns) for r in chunk]
            arrays = [
                pa.array([_typed(row[i], types[i], pa) for row in records], type=types[i])
                for i in range(len(header))
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            rows += len(chunk)
            labelled += sum(r.labelled is not None for r in chunk)
            dropped += _dropped(chunk, columns)
    return ExportSummary(rows, labelled, dropped, out)


def _arrow_type(pa: Any, name: str, values: list[Any]) -> Any:
    if name in {"row", "version"}:
        return pa.int64()
    present = {type(v) for v in values if v is not None}
    if present <= {bool} and present:
        return pa.bool_()
    # Integers as float64: a later chunk may hold 2.5 where the first held only whole numbers.
    if present and present <= {int, float}:
        return pa.float64()
    return pa.string()


def _typed(value: Any, kind: Any, pa: Any) -> Any:
    if value is None:
        return None
    if kind == pa.string():
        return value if isinstance(value, str) else str(_cell(value))
    if kind == pa.float64():
        return float(value)
    return value
