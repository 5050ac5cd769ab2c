"""Opening the capture database: the engine for a URL, and its tables at the current layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url

from serving.capture.schema import MIGRATIONS, SCHEMA_VERSION, meta, metadata


class CaptureDatabaseError(Exception):
    """The database cannot hold captures (a later layout, or an unknown URL scheme)."""


def default_url(store: Path) -> str:
    """The embedded database of a model store: a SQLite file beside it (``models`` ->
    ``models.capture.sqlite``), so the store's folders stay models only."""
    root = Path(store).resolve()
    return f"sqlite:///{root.parent / (root.name + '.capture.sqlite')}"


def open_engine(url: str) -> Engine:
    """An engine for ``url``: ``sqlite:///file`` (in WAL mode, so readers never wait for the
    writer) or ``postgresql://...`` (through psycopg 3)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 5.0})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # pre_ping: a connection the server dropped (a restart) is replaced, not failed.
        return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2)
    raise CaptureDatabaseError(f"capture needs sqlite:// or postgresql:// URLs, not {backend}://")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (quality, exports) never block the writer. NORMAL: a crash may lose the
    # last transactions but never corrupts the file, which is what capture promises.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def ensure_schema(engine: Engine) -> int:
    """Create the tables on first use, migrate an earlier layout, refuse a later one; return
    the layout version found before (0 for a new database)."""
    with engine.begin() as conn:
        metadata.create_all(conn)
        found = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        if found is None:
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return 0
        version = int(found)
        if version > SCHEMA_VERSION:
            raise CaptureDatabaseError(
                f"the capture database has layout {version}, newer than this servewell "
                f"understands ({SCHEMA_VERSION}); upgrade servewell or point "
                "SERVEWELL_CAPTURE_URL elsewhere"
            )
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        if version < SCHEMA_VERSION:
            conn.execute(
                meta.update()
                .where(meta.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )
        return version
