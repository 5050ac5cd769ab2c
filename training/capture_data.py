"""Labelled traffic as training data: the predictions the service captured for a model, with the
labels applications sent back, checked against the production version's schema.

A captured row is usable when its inputs are exactly the production version's features, each
value of the feature's kind (and one of its categories, or null only where the schema allows
it), and its label one of the classes (a finite number for regressors). Any other row is
refused and counted by reason, as bad CSV input is, never fitted on and never a crash. A
prediction captured twice under one ``(request_id, row)`` (a client reusing its request id) is
used once: the newest.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.store import Feature, FeatureKind, Manifest, ModelStore, Task
from training.datasets import Dataset, fingerprint, load_dataset
from training.errors import DataError
from training.spec import Spec

CAPTURE_URL_VARIABLE = "SERVEWELL_CAPTURE_URL"
CHUNK_ROWS = 10_000


def capture_url(store_root: Path) -> str:
    """The database the service captures into: ``SERVEWELL_CAPTURE_URL``, else the SQLite file
    beside the store (the service's own default)."""
    from serving.capture.database import default_url

    return os.environ.get(CAPTURE_URL_VARIABLE) or default_url(store_root)


def shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def iso(ts: float) -> str:
    """UTC seconds as ISO 8601 with microseconds and an explicit offset."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


@dataclass
class TrafficFacts:
    """Which traffic a version was trained on, for the manifest and the model card."""

    use: str
    read: int = 0
    """Labelled captured rows read."""
    refused: dict[str, int] = field(default_factory=dict)
    """Rows refused, by reason."""
    duplicates: int = 0
    used: int = 0
    first: float | None = None
    last: float | None = None
    original_rows: int = 0
    holdout_rows: int = 0
    holdout_share: float = 0.0
    holdout_from: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "use": self.use,
            "labelled_rows_read": self.read,
            "refused": dict(sorted(self.refused.items())),
            "duplicates_dropped": self.duplicates,
            "captured_rows_used": self.used,
            "first_prediction": None if self.first is None else iso(self.first),
            "last_prediction": None if self.last is None else iso(self.last),
            "original_rows": self.original_rows,
            "holdout": self.holdout(),
            "holdout_rows": self.holdout_rows,
            "holdout_from": None if self.holdout_from is None else iso(self.holdout_from),
        }

    def holdout(self) -> str:
        return (
            f"the newest {self.holdout_share:.0%} of the labelled captured rows by prediction time"
        )

    def lines(self) -> list[str]:
        """What the model card and the run's output say about the data."""
        span = f"{iso(self.first or 0.0)} to {iso(self.last or 0.0)}"
        original = (
            f", plus {self.original_rows} rows of the spec's dataset"
            if self.use == "with_original"
            else " (the spec's dataset not included)"
        )
        refused = sum(self.refused.values())
        lines = [
            f"Traffic: {self.used} labelled captured rows predicted {span}{original}; "
            f"{refused} refused, {self.duplicates} duplicates dropped, of {self.read} read.",
            f"Holdout: {self.holdout()} ({self.holdout_rows} rows, from "
            f"{iso(self.holdout_from or 0.0)}); production is compared as served on it.",
        ]
        lines += [f"Refused: {n} row(s): {why}." for why, n in sorted(self.refused.items())]
        return lines


class _RefusedError(Exception):
    """One captured row that does not fit the schema; the message is the reason counted."""


def _value(feature: Feature, value: Any) -> float | str | None:
    """A captured input as the model is fitted on it (see datasets._coerce)."""
    name = feature.name
    if value is None:
        if not feature.nullable:
            raise _RefusedError(f"feature {name!r} is null, which the current schema refuses")
        return None
    if feature.kind == FeatureKind.CATEGORICAL:
        if not isinstance(value, str) or value not in (feature.categories or []):
            raise _RefusedError(f"feature {name!r} is not one of its categories")
        return value
    if feature.kind == FeatureKind.BOOLEAN:
        if not isinstance(value, bool):
            raise _RefusedError(f"boolean feature {name!r} is not true/false")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _RefusedError(f"{feature.kind.value} feature {name!r} is not a finite number")
    if feature.kind == FeatureKind.INTEGER and value != round(value):
        raise _RefusedError(f"integer feature {name!r} is not a whole number")
    return float(value)


def _label(schema: Manifest, label: Any) -> Any:
    if schema.task == Task.CLASSIFICATION:
        classes = schema.target.classes or []
        for c in classes:
            # `True == 1` and `"1" != 1`: booleans match booleans, text text, numbers numbers.
            same_kind = isinstance(label, bool) == isinstance(c, bool) and isinstance(
                label, str
            ) == isinstance(c, str)
            if same_kind and label == c:
                return c  # the class as the model knows it (2 for a label sent as 2.0)
        raise _RefusedError(f"label is not one of the classes {classes}")
    if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(label):
        raise _RefusedError("label is not a finite number")
    return float(label)


def _usable(schema: Manifest, inputs: dict[str, Any], label: Any) -> tuple[list[Any], Any]:
    names = schema.feature_names
    if inputs.keys() != set(names):
        missing = sorted(set(names) - inputs.keys())
        unknown = sorted(inputs.keys() - set(names))
        raise _RefusedError(
            f"inputs are not the current features (missing {missing}, unknown {unknown})"
        )
    return [_value(f, inputs[f.name]) for f in schema.features], _label(schema, label)


@dataclass(frozen=True)
class Traffic:
    X: pd.DataFrame
    y: pd.Series[Any]
    ts: pd.Series[Any]


def read_traffic(url: str, schema: Manifest, facts: TrafficFacts) -> Traffic:
    """The usable labelled captured rows of ``schema.name``, oldest first, de-duplicated;
    ``facts`` counts what was read, refused and dropped."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from serving.capture.database import CaptureDatabaseError, open_engine
    from serving.capture.store import CaptureStore

    try:
        _check_exists(url)
        engine = open_engine(url)
    except (ArgumentError, CaptureDatabaseError) as exc:
        raise DataError(f"unusable capture database URL: {exc}") from None
    kept: dict[tuple[str, int], tuple[float, list[Any], Any]] = {}
    refused: Counter[str] = Counter()
    try:
        chunks = CaptureStore(engine).scan(schema.name, labelled_only=True, chunk_rows=CHUNK_ROWS)
        for chunk in chunks:
            for r in chunk:
                facts.read += 1
                try:
                    values, label = _usable(schema, r.inputs, r.label)
                except _RefusedError as why:
                    refused[str(why)] += 1
                    continue
                key = (r.request_id, r.row)
                if key in kept:
                    facts.duplicates += 1
                    if kept[key][0] > r.ts:
                        continue
                kept[key] = (r.ts, values, label)
    except (SQLAlchemyError, CaptureDatabaseError) as exc:
        raise DataError(f"cannot read the capture database {shown_url(url)}: {exc}") from None
    finally:
        engine.dispose()
    facts.refused = dict(refused)
    rows = sorted(kept.values(), key=lambda item: item[0])
    facts.used = len(rows)
    if rows:
        facts.first, facts.last = rows[0][0], rows[-1][0]
    X = pd.DataFrame([values for _, values, _ in rows], columns=schema.feature_names)
    for f in schema.features:
        if f.kind == FeatureKind.CATEGORICAL:
            X[f.name] = X[f.name].astype(object)
        else:
            X[f.name] = pd.to_numeric(X[f.name]).astype("float64")
    y = pd.Series([label for _, _, label in rows], name=schema.target.name)
    ts = pd.Series([t for t, _, _ in rows], dtype="float64")
    return Traffic(X, y, ts)


def _check_exists(url: str) -> None:
    """Training reads the capture database, never creates one: a missing SQLite file means
    nothing was captured where the service writes (SERVEWELL_CAPTURE, SERVEWELL_CAPTURE_URL)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:" or not Path(path).is_file():
            raise DataError(
                f"no capture database at {shown_url(url)}: the service captures there with "
                f"SERVEWELL_CAPTURE set; point {CAPTURE_URL_VARIABLE} at another one"
            )


def traffic_dataset(spec: Spec, store: ModelStore, url: str) -> tuple[Dataset, TrafficFacts]:
    """The spec's model's labelled traffic (plus the spec's dataset when ``capture.use`` is
    ``with_original``) as one dataset whose ``split_by`` orders it in time: the dataset's rows
    first (-inf), then the captured rows by prediction time."""
    current = store.production(spec.name)
    if current is None:
        raise DataError(
            f"{spec.name!r} has no production version: captured rows are checked against the "
            "served schema, so train it from its dataset first"
        )
    schema = store.manifest(spec.name, current)
    facts = TrafficFacts(use=spec.capture.use, holdout_share=spec.capture.holdout)
    traffic = read_traffic(url, schema, facts)
    if facts.used < spec.capture.min_rows:
        refused = sum(facts.refused.values())
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(facts.refused.items()))
        raise DataError(
            f"only {facts.used} usable labelled captured rows of {spec.name!r} in "
            f"{shown_url(url)} ({facts.read} labelled read, {refused} refused"
            + (f": {why}" if why else "")
            + f", {facts.duplicates} duplicates); capture.min_rows is {spec.capture.min_rows}: "
            "send more feedback labels, or lower capture.min_rows"
        )
    kinds = {f.name: f.kind for f in schema.features}
    X, y, order = traffic.X, traffic.y, traffic.ts
    origin = f"{facts.used} labelled captured rows of {spec.name} ({shown_url(url)})"
    if spec.capture.use == "with_original":
        original = load_dataset(spec)
        if original.kinds != kinds:
            raise DataError(
                f"the spec's features {original.kinds} differ from production v{current}'s "
                f"{kinds}: captured rows cannot be combined with its dataset"
            )
        facts.original_rows = len(original.X)
        X = pd.concat([original.X, X], ignore_index=True)
        if original.y.dtype == object:
            y = y.astype(str)
        y = pd.concat([original.y, y], ignore_index=True)
        order = pd.concat([pd.Series(np.full(len(original.X), -np.inf)), order], ignore_index=True)
        origin += f" and {original.origin}"
    y = y.rename(spec.dataset.target)
    return (
        Dataset(
            X=X,
            y=y,
            kinds=kinds,
            origin=origin,
            fingerprint=fingerprint(X, y),
            split_by=order,
            warnings=tuple(f"refused {n} captured row(s): {r}" for r, n in facts.refused.items()),
        ),
        facts,
    )
