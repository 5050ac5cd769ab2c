"""The capture database through CaptureStore, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Engine

from serving.capture.records import Label
from serving.capture.store import CaptureStore
from tests.serving.capture.records import captured


def test_rows_come_back_as_the_request_gave_them(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("req-1", rows=3, ts=1000.0), captured("req-2", rows=1, ts=1001.0)])
    rows = store.rows("houses")
    assert [(r.request_id, r.row) for r in rows] == [
        ("req-2", 0),
        ("req-1", 2),
        ("req-1", 1),
        ("req-1", 0),
    ]
    first = rows[-1]
    # Encoded floats back to feature values: NaN is null, integers, booleans, category names.
    assert first.inputs == {"size": None, "rooms": 3, "garden": True, "city": "paris"}
    assert rows[-2].inputs["size"] == 51.5
    assert first.prediction == "dear"
    assert rows[-2].prediction == "cheap"
    assert first.probabilities == {"cheap": 0.25, "dear": 0.75}
    assert (first.model, first.version, first.transport) == ("houses", 1, "rest")
    assert math.isclose(first.ts, 1000.0)
    assert first.latency_ms == 1.5
    assert first.label is None
    assert first.labelled is None


def test_rows_without_probabilities_store_none(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("r", rows=2, probabilities=False)])
    assert [r.probabilities for r in store.rows("houses")] == [None, None]


def test_known_finds_captured_keys_of_that_model_only(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("a", rows=2), captured("b", rows=1, name="flats")])
    asked = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("zzz", 0)]
    assert store.known("houses", asked) == {("a", 0), ("a", 1)}
    assert store.known("flats", asked) == {("b", 0)}
    assert store.known("houses", []) == set()


def test_known_handles_more_keys_than_one_statement_holds(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("big", rows=1200)])
    keys = [("big", i) for i in range(1300)]
    assert len(store.known("houses", keys)) == 1200


def test_a_label_sent_again_replaces_the_first(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("a", rows=2, ts=10.0)])
    store.record_labels("houses", [Label("a", 0, "cheap"), Label("a", 1, "dear")], now=20.0)
    store.record_labels("houses", [Label("a", 0, "dear")], now=30.0)
    rows = {r.row: r for r in store.rows("houses")}
    assert (rows[0].label, rows[0].labelled) == ("dear", 30.0)
    assert (rows[1].label, rows[1].labelled) == ("dear", 20.0)
    assert len(store.rows("houses", labelled_only=True)) == 2


def test_numeric_labels_keep_their_type(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured("a", rows=1)])
    store.record_labels("houses", [Label("a", 0, 12.5)], now=1.0)
    assert store.rows("houses")[0].label == 12.5


def test_rows_since_and_limit(engine: Engine) -> None:
    store = CaptureStore(engine)
    store.write([captured(f"r{i}", ts=100.0 + i) for i in range(10)])
    assert [r.request_id for r in store.rows("houses", since=107.0)] == ["r9", "r8", "r7"]
    assert [r.request_id for r in store.rows("houses", limit=2)] == ["r9", "r8"]


@pytest.mark.parametrize("by", ["age", "rows"])
def test_prune_removes_old_rows_and_their_labels(engine: Engine, by: str) -> None:
    store = CaptureStore(engine)
    store.write([captured(f"r{i}", ts=100.0 + i) for i in range(10)])
    store.write([captured("other", name="flats", ts=1.0)])
    store.record_labels("houses", [Label("r0", 0, "dear"), Label("r9", 0, "cheap")], now=200.0)
    if by == "age":
        removed = store.prune("houses", older_than=106.0, keep_rows=None)
    else:
        removed = store.prune("houses", older_than=None, keep_rows=4)
    assert removed == 6
    assert [r.request_id for r in store.rows("houses")] == ["r9", "r8", "r7", "r6"]
    assert [r.label for r in store.rows("houses", labelled_only=True)] == ["cheap"]
    assert store.count("flats") == 1  # another model's rows are its own
    assert store.prune("houses", older_than=0.0, keep_rows=100) == 0
