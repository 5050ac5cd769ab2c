"""Capture when its database fails: PostgreSQL stopped while the service runs, and the server
killed with SIGKILL. Predictions never notice; capture counts what it drops and resumes."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from serving.capture.database import open_engine
from serving.capture.store import CaptureStore
from serving.store import ModelStore
from tests.serving.capture.postgres import PostgresServer, binaries
from tests.serving.capture.records import count_rows
from tests.serving.conftest import IRIS_ROW, quiet_settings, running_server
from tests.serving.process import start_serving


def _predict(client: httpx.Client, request_id: str, rows: int = 1) -> None:
    response = client.post(
        "/models/iris/predict",
        json={"rows": [IRIS_ROW] * rows},
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200, response.text


@pytest.mark.postgres
def test_postgresql_stopped_and_back(trained_store: ModelStore) -> None:
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with tempfile.TemporaryDirectory(prefix="servewell-pg-") as tmp:
        database = PostgresServer(tmp)
        database.start()
        settings = quiet_settings(
            trained_store, pool_size=1, capture="all", capture_url=database.url
        )
        try:
            with running_server(settings) as server, server.client() as client:
                writer = server.app.state.dataplane.capture.writer
                _predict(client, "before")
                assert writer.flush(10)
                assert count_rows(database.url, "iris") == 1

                database.stop()
                for i in range(5):
                    _predict(client, f"down-{i}")  # answered as ever
                assert writer.flush(30)
                assert writer.dropped == 5
                scrape = client.get("/metrics").text
                assert "servewell_capture_dropped_total 5.0" in scrape
                answer = client.post(
                    "/models/iris/feedback", json=[{"request_id": "before", "label": "setosa"}]
                )
                assert answer.status_code == 503

                database.start()
                deadline = time.monotonic() + 30
                while count_rows(database.url, "iris") < 2 and time.monotonic() < deadline:
                    _predict(client, "after")  # capture resumes by itself
                    writer.flush(10)
                assert count_rows(database.url, "iris") >= 2
                joined = client.post(
                    "/models/iris/feedback", json=[{"request_id": "before", "label": "setosa"}]
                )
                assert joined.json()["joined"] == 1
        finally:
            database.stop()


def _written(path: Path) -> bool:
    try:
        with sqlite3.connect(path) as db:
            return bool(db.execute("SELECT count(*) FROM captured_predictions").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return False


@pytest.mark.slow
def test_sigkill_leaves_the_database_consistent(trained_store: ModelStore, tmp_path: Path) -> None:
    path = tmp_path / "capture.sqlite"
    process, url = start_serving(
        trained_store, pool_size="1", capture="all", capture_url=f"sqlite:///{path}"
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            # Killed while the writer is busy: once it has written some, more keep coming.
            deadline = time.monotonic() + 30
            i = 0
            while i < 200 or (not _written(path) and time.monotonic() < deadline):
                _predict(client, f"r{i}", rows=1 + i % 7)
                i += 1
            for j in range(i, i + 100):
                _predict(client, f"r{j}", rows=1 + j % 7)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = dict(
            db.execute("SELECT request_id, count(*) FROM captured_predictions GROUP BY request_id")
        )
    assert counts  # the writer had time to write some of them
    # What was written is whole: a request's rows are written in one transaction or not at all.
    assert all(counts[rid] == 1 + int(rid[1:]) % 7 for rid in counts)
    assert len(counts) <= i + 100


def test_a_full_disk_and_back(trained_store: ModelStore, tmp_path: Path) -> None:
    """The writer process may grow no file past its size when the predictions come (the
    kernel's file size limit, so SQLite's writes really fail), then room again: predictions
    never notice, capture drops and counts, and resumes."""
    path = tmp_path / "capture.sqlite"
    settings = quiet_settings(
        trained_store, pool_size=1, capture="all", capture_url=f"sqlite:///{path}"
    )
    with running_server(settings) as server, server.client() as client:
        capture = server.app.state.dataplane.capture
        _predict(client, "first")
        assert capture.writer.flush(10)
        pid = capture.process.pid
        assert pid is not None
        files = [path, path.with_name(path.name + "-wal")]
        limit = max(f.stat().st_size for f in files if f.exists())
        unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, unlimited[1]))
        for i in range(3):
            _predict(client, f"full-{i}", rows=2000)  # more than the files have room for
        assert capture.writer.flush(30)
        assert capture.writer.dropped == 6000
        assert capture.process.pid == pid  # a failed write is not a dead writer
        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        _predict(client, "room-again")
        assert capture.writer.flush(10)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = {
        (r.request_id, r.row)
        for r in CaptureStore(open_engine(f"sqlite:///{path}")).rows("iris", limit=10)
    }
    assert ("room-again", 0) in rows
    assert ("first", 0) in rows
    assert not any(r.startswith("full-") for r, _ in rows)


def _immutable(folder: Path, on: bool) -> None:
    """``chattr +i`` on the folder and its files: even root may not write them, through file
    descriptors already open too (a disk remounted read-only refuses while files are open for
    writing, so this is how a running writer is made to meet a disk that refuses writes)."""
    paths = [folder, *folder.iterdir()]
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)


@pytest.mark.root
def test_files_that_refuse_writes_and_back(trained_store: ModelStore, tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("making files immutable needs root and chattr (e2fsprogs)")
    folder = tmp_path / "capture"
    folder.mkdir()
    path = folder / "capture.sqlite"
    url = f"sqlite:///{path}"
    settings = quiet_settings(trained_store, pool_size=1, capture="all", capture_url=url)
    with running_server(settings) as server, server.client() as client:
        capture = server.app.state.dataplane.capture
        _predict(client, "first")
        assert capture.writer.flush(10)
        _immutable(folder, True)
        try:
            for i in range(3):
                _predict(client, f"ro-{i}", rows=2)  # answered as ever
            assert capture.writer.flush(30)
            assert capture.writer.dropped == 6
        finally:
            _immutable(folder, False)
        deadline = time.monotonic() + 30
        while count_rows(url, "iris") < 2 and time.monotonic() < deadline:
            _predict(client, "rw-again")  # capture resumes by itself
            capture.writer.flush(10)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = {r.request_id for r in CaptureStore(open_engine(url)).rows("iris", limit=100)}
    assert "first" in ids
    assert "rw-again" in ids
    assert not any(i.startswith("ro-") for i in ids)


def test_shutdown_writes_what_is_queued(trained_store: ModelStore, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    settings = quiet_settings(trained_store, pool_size=1, capture="all", capture_url=url)
    with running_server(settings) as server, server.client() as client:
        for i in range(50):
            _predict(client, f"s{i}")
    assert count_rows(url, "iris") == 50  # the server stopped: everything it answered was written
