"""The capture queue and its writer thread: the request path never waits for the database.

:meth:`CaptureWriter.offer` is called on the event loop: one lock, one append, no I/O. When the
queue already holds ``max_rows`` rows the request's rows are dropped and counted instead
(``dropped``), so a slow or unreachable database costs memory up to that bound and nothing
else. One thread takes what is queued, at most ``batch_rows`` rows at a time, and writes each
batch in one transaction. A batch that fails to write is dropped and counted too, and the
failure logged at most once per ``error_interval_s`` (the database being down must not flood
the log); the next batch tries again, so capture resumes by itself when the database is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from serving.capture.records import Captured

log = logging.getLogger("servewell.capture")

Sink = Callable[[Sequence[Captured]], None]
"""Writes a batch in one transaction, or raises."""


class CaptureWriter:
    def __init__(
        self,
        sink: Sink,
        *,
        max_rows: int = 100_000,
        batch_rows: int = 5_000,
        interval_s: float = 0.2,
        error_interval_s: float = 60.0,
    ) -> None:
        self._sink = sink
        self.max_rows = max_rows
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self.error_interval_s = error_interval_s
        self._queue: deque[Captured] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._writing = 0
        """Rows taken from the queue and not yet written or dropped (for :meth:`flush`)."""
        self._stopping = False
        self._last_error_log = -float("inf")
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="servewell-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def offer(self, record: Captured) -> bool:
        """Queue ``record``; False (its rows counted as dropped) when the queue is full."""
        count = record.count
        with self._lock:
            if self._stopping or self._queued_rows + count > self.max_rows:
                self.dropped += count
                return False
            self._queue.append(record)
            self._queued_rows += count
            full = self._queued_rows >= self.batch_rows
        if full:  # otherwise the thread comes by within interval_s
            self._wake.set()
        return True

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued now is written or dropped; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while self._queued_rows or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float) -> None:
        """Write what is queued within ``timeout_s`` (what is left is dropped and counted),
        then stop the thread."""
        flushed = self.flush(timeout_s)
        with self._lock:
            self._stopping = True
            if not flushed:
                self.dropped += self._queued_rows
                log.warning(
                    "capture: %d rows not written within %.1f s at shutdown",
                    self._queued_rows,
                    timeout_s,
                )
                self._queue.clear()
                self._queued_rows = 0
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(0.1, timeout_s))

    # -- the thread --------------------------------------------------------------------------

    def _take(self) -> list[Captured]:
        with self._lock:
            batch: list[Captured] = []
            rows = 0
            while self._queue and rows < self.batch_rows:
                record = self._queue.popleft()
                batch.append(record)
                rows += record.count
            self._queued_rows -= rows
            self._writing = rows
            return batch

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            while batch := self._take():
                self._write(batch)
            with self._idle:
                self._writing = 0
                self._idle.notify_all()
                if self._stopping and not self._queue:
                    return

    def _write(self, batch: list[Captured]) -> None:
        rows = sum(r.count for r in batch)
        try:
            self._sink(batch)
        except Exception as exc:  # the database's problem, never the request's
            with self._lock:
                self.dropped += rows
                self.failures += 1
            now = time.monotonic()
            if now - self._last_error_log >= self.error_interval_s:
                self._last_error_log = now
                log.error(
                    "capture: writing %d rows failed (%s: %s); dropped %d rows so far, "
                    "retrying with the next batch",
                    rows,
                    type(exc).__name__,
                    exc,
                    self.dropped,
                )
            return
        with self._lock:
            self.written += rows
