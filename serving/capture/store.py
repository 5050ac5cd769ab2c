"""Reading and writing the capture database (SQLAlchemy Core; SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy import Engine, and_, delete, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from serving.capture.records import (
    COLUMNS,
    Captured,
    CapturedRow,
    InputDecoder,
    Label,
    add_rows,
    decoders,
)
from serving.capture.schema import labels, predictions

ROWS_PER_STATEMENT = 90
"""Rows inserted by one statement: 900 parameters, within SQLite's oldest limit (999)."""


class CaptureStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._decoders: dict[tuple[str, int], InputDecoder] = {}
        quote = engine.dialect.identifier_preparer.quote
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        into = f"INSERT INTO {quote(predictions.name)} ({', '.join(quote(c) for c in COLUMNS)}) "
        values = f"({', '.join(mark for _ in COLUMNS)})"
        self._insert = into + "VALUES " + values
        self._insert_many = into + "VALUES " + ", ".join([values] * ROWS_PER_STATEMENT)

    def write(self, batch: Sequence[Captured]) -> None:
        """Insert the rows of ``batch`` in one transaction (the writer thread's sink).

        Rows go to the driver as tuples, ROWS_PER_STATEMENT to a statement, bypassing
        SQLAlchemy's per-row parameter processing. Everything here holds the GIL except the
        database's own work, and the event loop waits while it does: one statement per row (an
        ``executemany``) also handed the GIL back and forth with the busy event loop for every
        row, which cost the loop itself about 25 µs per captured request (measured per thread).
        """
        flat: list[tuple[Any, ...]] = []
        for record in batch:
            key = (record.manifest.name, record.manifest.version)
            decode = self._decoders.get(key)
            if decode is None:
                decode = self._decoders[key] = decoders(record.manifest)
            add_rows(flat, record, decode)
        if not flat:
            return
        per = ROWS_PER_STATEMENT
        whole = len(flat) - len(flat) % per
        with self.engine.begin() as conn:
            if whole:
                groups = [
                    tuple(v for row in flat[i : i + per] for v in row) for i in range(0, whole, per)
                ]
                conn.exec_driver_sql(self._insert_many, groups)
            if whole < len(flat):
                conn.exec_driver_sql(self._insert, flat[whole:])

    def known(self, model: str, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which ``(request_id, row)`` of ``model`` were captured."""
        wanted = list(set(keys))
        if not wanted:
            return set()
        c = predictions.c
        found: set[tuple[str, int]] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):  # bounded statements on either database
                chunk = wanted[start : start + 500]
                query = select(c.request_id, c.row).where(
                    c.model == model, tuple_(c.request_id, c.row).in_(chunk)
                )
                found.update((r, i) for r, i in conn.execute(query))
        return found

    def record_labels(self, model: str, items: Sequence[Label], now: float) -> None:
        """Store labels in one transaction; a label sent again replaces the one before."""
        if not items:
            return
        values = [
            {
                "model": model,
                "request_id": item.request_id,
                "row": item.row,
                "label": orjson.dumps(item.label).decode(),
                "received": now,
            }
            for item in items
        ]
        dialect = self.engine.dialect.name
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(labels)
        statement = upsert.on_conflict_do_update(
            index_elements=[labels.c.model, labels.c.request_id, labels.c.row],
            set_={"label": upsert.excluded.label, "received": upsert.excluded.received},
        )
        with self.engine.begin() as conn:
            conn.execute(statement, values)

    def rows(
        self,
        model: str,
        *,
        limit: int = 1000,
        since: float | None = None,
        labelled_only: bool = False,
        version: int | None = None,
    ) -> list[CapturedRow]:
        """Captured rows of ``model``, newest first, with their labels."""
        p, lab = predictions.c, labels.c
        join = predictions.outerjoin(
            labels,
            and_(lab.model == p.model, lab.request_id == p.request_id, lab.row == p.row),
        )
        query = select(*predictions.c, lab.label, lab.received).select_from(join)
        query = query.where(p.model == model)
        if since is not None:
            query = query.where(p.ts >= since)
        if version is not None:
            query = query.where(p.version == version)
        if labelled_only:
            query = query.where(lab.label.is_not(None))
        query = query.order_by(p.ts.desc(), p.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_captured_row(r._mapping) for r in conn.execute(query)]

    def scan(
        self, model: str, *, labelled_only: bool = False, chunk_rows: int = 10_000
    ) -> Iterator[list[CapturedRow]]:
        """Every captured row of ``model``, oldest first (by insertion), in chunks of at most
        ``chunk_rows``: for exports and retraining, which read all rows without holding the
        database's whole result at once (each chunk is one short query, paged by id)."""
        p, lab = predictions.c, labels.c
        join = predictions.outerjoin(
            labels,
            and_(lab.model == p.model, lab.request_id == p.request_id, lab.row == p.row),
        )
        base = select(*predictions.c, lab.label, lab.received).select_from(join)
        base = base.where(p.model == model)
        if labelled_only:
            base = base.where(lab.label.is_not(None))
        last = -1
        while True:
            query = base.where(p.id > last).order_by(p.id).limit(chunk_rows)
            with self.engine.connect() as conn:
                found = [r._mapping for r in conn.execute(query)]
            if not found:
                return
            last = found[-1]["id"]
            yield [_captured_row(m) for m in found]
            if len(found) < chunk_rows:
                return

    def models(self) -> list[str]:
        """Every model with captured rows."""
        with self.engine.connect() as conn:
            query = select(predictions.c.model).distinct().order_by(predictions.c.model)
            return list(conn.execute(query).scalars())

    def count(self, model: str) -> int:
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(predictions)
            return int(conn.execute(query.where(predictions.c.model == model)).scalar() or 0)

    def prune(self, model: str, *, older_than: float | None, keep_rows: int | None) -> int:
        """Delete ``model``'s captured rows older than ``older_than`` (UTC seconds) and all but
        its newest ``keep_rows``, with labels no prediction references any more; return how
        many predictions went."""
        p = predictions.c
        removed = 0
        with self.engine.begin() as conn:
            if older_than is not None:
                gone = conn.execute(delete(predictions).where(p.model == model, p.ts < older_than))
                removed += gone.rowcount or 0
            if keep_rows is not None:
                newest = select(p.id).where(p.model == model).order_by(p.id.desc())
                cutoff = conn.execute(newest.offset(keep_rows).limit(1)).scalar()
                if cutoff is not None:
                    gone = conn.execute(delete(predictions).where(p.model == model, p.id <= cutoff))
                    removed += gone.rowcount or 0
            if removed:
                lab = labels.c
                referenced = select(p.request_id).where(
                    p.model == lab.model, p.request_id == lab.request_id, p.row == lab.row
                )
                conn.execute(delete(labels).where(lab.model == model, ~referenced.exists()))
        return removed


def _captured_row(m: Any) -> CapturedRow:
    label = m["label"]
    probabilities = m["probabilities"]
    return CapturedRow(
        model=m["model"],
        version=m["version"],
        request_id=m["request_id"],
        row=m["row"],
        ts=m["ts"],
        transport=m["transport"],
        latency_ms=m["latency_ms"],
        inputs=orjson.loads(m["inputs"]),
        prediction=orjson.loads(m["prediction"]),
        probabilities=None if probabilities is None else orjson.loads(probabilities),
        label=None if label is None else orjson.loads(label),
        labelled=m["received"],
    )
