"""What the request path hands to capture, and how it becomes database rows.

A :class:`Captured` is one request: references to arrays the request already has, built with
no per-row work, so capturing costs the event loop one object and one append. The writer's
thread turns it into rows (:func:`rows_of`): inputs back to their feature values by name,
labels and probabilities as the response gave them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.execution.runtime import FloatArray, Prediction
from serving.store import FeatureKind, Manifest


@dataclass(frozen=True, slots=True)
class Captured:
    """One answered request of one model version."""

    manifest: Manifest
    request_id: str
    ts: float
    """When the answer was ready, UTC seconds since the epoch."""
    latency_ms: float
    transport: str
    """``rest`` (typed JSON), ``v2`` (Open Inference Protocol over HTTP), ..."""
    rows: FloatArray
    """The validated inputs, encoded in feature order (serving.core.dataplane.RowEncoder)."""
    prediction: Prediction
    class_keys: Sequence[str]
    """The probability columns' keys, as the response writes them."""

    @property
    def count(self) -> int:
        return len(self.rows)


Decoder = Callable[[float], Any]


def _decoder(kind: FeatureKind, categories: Sequence[str] | None) -> Decoder:
    """An encoded value back to what a client sends: NaN is null, categories are text."""
    if kind == FeatureKind.CATEGORICAL:
        names = list(categories or [])
        return lambda v: None if math.isnan(v) else names[int(v)]
    if kind == FeatureKind.BOOLEAN:
        return lambda v: None if math.isnan(v) else bool(v)
    return lambda v: None if math.isnan(v) else int(v)


@dataclass(frozen=True, slots=True)
class InputDecoder:
    """A manifest's encoded rows back to inputs by feature name. Numeric features pass as
    they are (orjson writes NaN as null); only the others are decoded, so a model of numbers
    costs one ``dict(zip(...))`` per row."""

    names: list[str]
    special: list[tuple[int, Decoder]]

    def inputs(self, row: list[float]) -> dict[str, Any]:
        for i, decode in self.special:
            row[i] = decode(row[i])
        return dict(zip(self.names, row, strict=True))


def decoders(manifest: Manifest) -> InputDecoder:
    special = [
        (i, _decoder(f.kind, f.categories))
        for i, f in enumerate(manifest.features)
        if f.kind != FeatureKind.NUMERIC
    ]
    return InputDecoder([f.name for f in manifest.features], special)


COLUMNS = (
    "model",
    "version",
    "request_id",
    "row",
    "ts",
    "transport",
    "latency_ms",
    "inputs",
    "prediction",
    "probabilities",
)
"""The columns :func:`rows_of` fills, in its tuples' order."""


def rows_of(record: Captured, decode: InputDecoder) -> Iterator[tuple[Any, ...]]:
    """The database rows of one request, as tuples in :data:`COLUMNS` order (``decode``:
    :func:`decoders` of its manifest). Tuples, built with as little per-row work as
    possible: this runs on the writer's thread, which shares the GIL with the event loop."""
    manifest = record.manifest
    head = (manifest.name, manifest.version, record.request_id)
    tail = (record.ts, record.transport, record.latency_ms)
    dumps, inputs = orjson.dumps, decode.inputs
    values = [dumps(v).decode() for v in record.prediction.predictions.tolist()]
    probabilities = record.prediction.probabilities
    if probabilities is not None and len(record.class_keys) == probabilities.shape[1]:
        keys = list(record.class_keys)
        probability_rows: list[str | None] = [
            dumps(dict(zip(keys, p, strict=True))).decode() for p in probabilities.tolist()
        ]
    else:
        probability_rows = [None] * len(values)
    rows = np.asarray(record.rows).tolist()
    for i, (row, value, probability) in enumerate(zip(rows, values, probability_rows, strict=True)):
        yield (*head, i, *tail, dumps(inputs(row)).decode(), value, probability)
