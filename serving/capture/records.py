"""What the request path hands to capture, and how it becomes database rows.

A :class:`Captured` is one request: references to arrays the request already has, built with
no per-row work, so capturing costs the event loop one object and one append. The writer's
thread turns it into rows (:func:`rows_of`): inputs back to their feature values by name,
labels and probabilities as the response gave them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    they are (orjson writes NaN as null); only the ``special`` ones are decoded, so a model of
    numbers costs one ``dict(zip(...))`` per row."""

    names: list[str]
    special: list[tuple[int, Decoder]]


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


def add_rows(out: list[tuple[Any, ...]], record: Captured, decode: InputDecoder) -> None:
    """Append the database rows of one request to ``out``: tuples in :data:`COLUMNS` order,
    the JSON columns as text (``decode``: :func:`decoders` of its manifest).

    One loop, no generator, and the numpy arrays turned into lists once: this runs on the
    writer's thread, which shares the GIL with the event loop, so every microsecond per row
    here is one the service loses per captured request."""
    manifest = record.manifest
    name, version, request_id = manifest.name, manifest.version, record.request_id
    ts, transport, latency = record.ts, record.transport, record.latency_ms
    names, special, dumps = decode.names, decode.special, orjson.dumps
    values = record.prediction.predictions.tolist()
    rows = record.rows.tolist()
    probabilities = record.prediction.probabilities
    keys = record.class_keys
    with_probabilities = probabilities is not None and len(keys) == probabilities.shape[1]
    columns = probabilities.tolist() if with_probabilities else values  # type: ignore[union-attr]
    for i, (row, value, p) in enumerate(zip(rows, values, columns, strict=True)):
        for j, decoder in special:
            row[j] = decoder(row[j])
        out.append(
            (
                name,
                version,
                request_id,
                i,
                ts,
                transport,
                latency,
                dumps(dict(zip(names, row, strict=True))).decode(),
                dumps(value).decode(),
                dumps(dict(zip(keys, p, strict=True))).decode() if with_probabilities else None,
            )
        )


@dataclass(frozen=True, slots=True)
class Label:
    """A true label (or value) for one captured row, keyed as the application knows it."""

    request_id: str
    row: int
    label: Any


@dataclass(frozen=True, slots=True)
class CapturedRow:
    """One captured prediction, with its label when one was sent."""

    model: str
    version: int
    request_id: str
    row: int
    ts: float
    transport: str
    latency_ms: float
    inputs: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None
    label: Any = None
    labelled: float | None = None
    """When the label arrived (UTC seconds), None when there is none."""
