"""The capture database's tables and the version of their layout.

One table per kind of fact: ``captured_predictions`` (one row per predicted row, appended, never
updated) and ``feedback_labels`` (one row per labelled prediction, replaced when a label is sent
again). A label references its prediction by ``(model, request_id, row)``, the key applications
know, rather than by a database id, so labels can be joined whichever process wrote the
prediction. Values are JSON text: inputs by feature name, the prediction, probabilities by class
(portable across SQLite and PostgreSQL, and encoded with orjson at a fraction of the cost of
SQLAlchemy's JSON type). Times are UTC seconds since the epoch.

``servewell_meta`` holds ``schema_version``. A database written by a later layout is refused,
never altered; an earlier one is migrated by :data:`MIGRATIONS` in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 1

metadata = MetaData()

meta = Table(
    "servewell_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

predictions = Table(
    "captured_predictions",
    metadata,
    # SQLite makes only INTEGER PRIMARY KEY an alias of its rowid (auto-incremented).
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("model", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("request_id", String(200), nullable=False),
    Column("row", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("transport", String(16), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("inputs", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("probabilities", Text, nullable=True),
    Index("ix_captured_key", "model", "request_id", "row"),
    Index("ix_captured_time", "model", "ts"),
)

labels = Table(
    "feedback_labels",
    metadata,
    Column("model", String(128), primary_key=True),
    Column("request_id", String(200), primary_key=True),
    Column("row", Integer, primary_key=True),
    Column("label", Text, nullable=False),
    Column("received", Float, nullable=False),
)

MIGRATIONS: dict[int, Callable[[Connection], None]] = {}
"""``n: step`` brings a database of layout ``n`` to ``n + 1`` (none yet: this is the first)."""
