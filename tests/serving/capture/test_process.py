"""The writer process: batches packed column by column, written in a process of its own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from serving.capture import process
from serving.capture.database import open_engine
from serving.capture.policy import CapturePolicy
from serving.capture.process import CaptureWriteError, WriterProcess, pack, unpack
from serving.capture.store import CaptureStore
from tests.serving.capture.records import captured, count_rows


def test_unpack_gives_back_every_request_as_it_was_packed() -> None:
    batch = [
        captured("a", rows=3),
        captured("b", rows=1, name="flats"),
        captured("c", rows=2, probabilities=False),
        captured("d", rows=2, version=2),
        captured("e", rows=1),
    ]
    packed, manifests = pack(batch)
    # One group per model version and whether probabilities were computed.
    assert sorted((p.key, p.probabilities is not None) for p in packed) == [
        (("flats", 1), True),
        (("houses", 1), False),
        (("houses", 1), True),
        (("houses", 2), True),
    ]
    assert set(manifests) == {("houses", 1), ("flats", 1), ("houses", 2)}
    back = {r.request_id: r for r in unpack(packed, manifests)}
    assert sorted(back) == ["a", "b", "c", "d", "e"]
    for before in batch:
        after = back[before.request_id]
        assert (after.manifest.name, after.manifest.version) == (
            before.manifest.name,
            before.manifest.version,
        )
        assert (after.ts, after.latency_ms, after.transport) == (
            before.ts,
            before.latency_ms,
            before.transport,
        )
        np.testing.assert_array_equal(after.rows, before.rows)  # NaN where it was
        assert list(after.prediction.predictions) == list(before.prediction.predictions)
        if before.prediction.probabilities is None:
            assert after.prediction.probabilities is None
        else:
            assert after.prediction.probabilities is not None
            np.testing.assert_array_equal(
                after.prediction.probabilities, before.prediction.probabilities
            )
        assert list(after.class_keys) == list(before.class_keys)


def _writer(tmp_path: Path) -> tuple[WriterProcess, str]:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    writer = WriterProcess(url, CapturePolicy(models=None))
    writer.start()
    return writer, url


def test_batches_are_written_by_another_process(tmp_path: Path) -> None:
    writer, url = _writer(tmp_path)
    try:
        assert writer.pid not in (None, os.getpid())
        writer([captured("a", rows=3), captured("b", rows=2)])
        writer([captured("c", rows=1)])  # its manifest was sent with the first batch only
        assert count_rows(url, "houses") == 6
        rows = CaptureStore(open_engine(url)).rows("houses")
        assert {r.request_id for r in rows} == {"a", "b", "c"}
        assert rows[-1].inputs == {"size": None, "rooms": 3, "garden": True, "city": "paris"}
    finally:
        writer.close(5)
    assert writer.pid is None


def test_a_failed_write_raises_with_the_reason_and_the_process_goes_on(tmp_path: Path) -> None:
    writer = WriterProcess(
        f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite'}", CapturePolicy(None)
    )
    writer.start()
    try:
        pid = writer.pid
        with pytest.raises(CaptureWriteError, match="OperationalError"):
            writer([captured("a")])
        assert writer.pid == pid
    finally:
        writer.close(5)


def test_a_killed_process_drops_its_batch_and_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, url = _writer(tmp_path)
    try:
        writer([captured("before")])
        pid = writer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(CaptureWriteError, match="gone"):
            writer([captured("lost")])
        with pytest.raises(CaptureWriteError, match="restarting"):
            writer([captured("too soon")])
        monkeypatch.setattr(process, "RESTART_INTERVAL_S", 0.0)
        writer([captured("after")])
        assert writer.pid not in (None, pid)
        assert {r.request_id for r in CaptureStore(open_engine(url)).rows("houses")} == {
            "before",
            "after",
        }
    finally:
        writer.close(5)


def test_the_writer_process_applies_retention_in_the_background(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.sqlite'}"
    policy = CapturePolicy(
        models=None, max_age_s=3600.0, max_rows_per_model=3, prune_interval_s=0.0
    )
    writer = WriterProcess(url, policy)
    writer.start()
    now = time.time()
    try:
        writer([captured("stale", rows=1, ts=now - 7200), captured("old", rows=4, ts=now - 10)])
        writer([captured("new", rows=2, ts=now - 5)])  # after each batch: retention
        kept = CaptureStore(open_engine(url)).rows("houses")
        assert [(r.request_id, r.row) for r in kept] == [("new", 1), ("new", 0), ("old", 3)]
    finally:
        writer.close(5)
