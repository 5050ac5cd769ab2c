"""Opening the capture database: engines per URL, the schema created once and versioned."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from serving.capture.database import (
    CaptureDatabaseError,
    default_url,
    ensure_schema,
    open_engine,
)
from serving.capture.schema import SCHEMA_VERSION, meta


def test_the_default_database_is_a_file_beside_the_store(tmp_path: Path) -> None:
    url = default_url(tmp_path / "models")
    assert url == f"sqlite:///{tmp_path / 'models.capture.sqlite'}"


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()


def test_other_schemes_are_refused() -> None:
    with pytest.raises(CaptureDatabaseError, match="mysql"):
        open_engine("mysql://localhost/db")


def test_the_schema_is_created_once_and_records_its_version(engine: Engine) -> None:
    assert ensure_schema(engine) == SCHEMA_VERSION  # the fixture created it: found as is
    with engine.connect() as conn:
        rows = conn.execute(select(meta.c.key, meta.c.value)).all()
    assert rows == [("schema_version", str(SCHEMA_VERSION))]


def test_a_later_layout_is_refused_and_left_alone(engine: Engine) -> None:
    later = str(SCHEMA_VERSION + 1)
    with engine.begin() as conn:
        conn.execute(meta.update().values(value=later))
    with pytest.raises(CaptureDatabaseError, match="newer than this servewell"):
        ensure_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(select(meta.c.value)).scalar() == later
