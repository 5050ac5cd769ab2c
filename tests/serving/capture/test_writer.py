"""The capture queue: bounded, never blocking, batched, and failures counted and logged once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from serving.capture.records import Captured
from serving.capture.writer import CaptureWriter
from tests.serving.capture.records import captured


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: Sequence[Captured]) -> None:
        self.gate.wait(10)
        if self.fail:
            raise OSError("disk full")
        self.batches.append([r.request_id for r in batch])


def test_rows_are_written_in_batches_of_at_most_batch_rows() -> None:
    sink = Recorder()
    writer = CaptureWriter(sink, max_rows=1000, batch_rows=10, interval_s=0.01)
    sink.gate.clear()  # hold the thread so everything is queued first
    writer.start()
    for i in range(10):
        assert writer.offer(captured(f"r{i}", rows=4))
    sink.gate.set()
    assert writer.flush(10)
    assert sorted(r for b in sink.batches for r in b) == sorted(f"r{i}" for i in range(10))
    # A request's rows stay together; a batch closes once it holds batch_rows or more.
    assert all(len(b) <= 3 for b in sink.batches)
    assert writer.written == 40
    assert writer.dropped == 0
    writer.close(1)


def test_a_full_queue_drops_and_counts_without_waiting() -> None:
    sink = Recorder()
    sink.gate.clear()
    writer = CaptureWriter(sink, max_rows=10, batch_rows=100, interval_s=60)
    writer.start()
    assert writer.offer(captured("a", rows=6))
    assert writer.offer(captured("b", rows=4))
    assert not writer.offer(captured("c", rows=1))  # 11 rows would not fit
    assert writer.dropped == 1
    assert writer.queued_rows == 10
    sink.gate.set()
    assert writer.flush(10)
    assert writer.written == 10
    assert writer.offer(captured("d", rows=10))  # room again
    writer.close(5)
    assert writer.written == 20


def test_failures_drop_the_batch_log_once_and_capture_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Recorder()
    sink.fail = True
    writer = CaptureWriter(sink, batch_rows=1, interval_s=0.01, error_interval_s=3600)
    writer.start()
    with caplog.at_level(logging.ERROR, logger="servewell.capture"):
        for i in range(5):
            writer.offer(captured(f"r{i}", rows=2))
            assert writer.flush(10)
    assert writer.dropped == 10
    assert writer.failures == 5
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "disk full" in errors[0].getMessage()
    sink.fail = False  # the database is back
    writer.offer(captured("ok", rows=3))
    assert writer.flush(10)
    assert sink.batches == [["ok"]]
    assert writer.written == 3
    writer.close(1)


def test_close_writes_what_is_queued_and_counts_what_it_cannot() -> None:
    sink = Recorder()
    writer = CaptureWriter(sink, interval_s=60)
    writer.start()
    writer.offer(captured("a", rows=2))
    writer.close(5)
    assert sink.batches == [["a"]]
    assert not writer.offer(captured("late"))  # stopped: counted, not queued
    assert writer.dropped == 1

    stuck = Recorder()
    stuck.gate.clear()  # a database that does not answer
    writer = CaptureWriter(stuck, batch_rows=1, interval_s=0.01)
    writer.start()
    writer.offer(captured("x", rows=1))
    writer.offer(captured("y", rows=2))
    writer.close(0.3)
    assert writer.dropped >= 2  # y never left the queue
    stuck.gate.set()
