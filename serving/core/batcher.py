"""Adaptive, row-aware micro-batching in the event loop.

One :class:`MicroBatcher` per served model version collects validated rows from concurrent
requests. A batch is cut by rows (never splitting a request) up to ``max_rows`` and sent:

* at once when the executor is idle, so a lone request pays no batching delay;
* when it is full, or when its oldest rows have waited ``max_delay`` seconds, if a slot is free;
* as soon as a slot frees up, when it had to wait for one.

Several batches may be in flight, up to the executor's capacity (:class:`Slots`, shared by
every batcher that uses the same executor). Results are split back to their requests in order.
Rows are validated before they get here, so one request's bad data cannot fail its batch-mates.
A request whose future is cancelled before its rows are sent (deadline passed, client gone)
is withdrawn: its rows never reach the executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np

from serving.execution.runtime import FloatArray, Prediction

log = logging.getLogger("servewell.batcher")

RunBatch = Callable[[FloatArray, bool], "asyncio.Future[Prediction]"]


class BatchObserver(Protocol):
    """Told about every batch (metrics, drift); every call happens in the event loop.

    Seeing whole batches rather than requests keeps per-request work off the hot path: one
    vectorised pass over a batch of many single-row requests instead of one per request."""

    def batch_sent(self, rows: FloatArray, waits: list[float]) -> list[int]:
        """A batch went to the executor; ``waits``: seconds each of its requests waited in
        the queue. Returns the positions of rows to warn about (sorted; usually none)."""

    def batch_done(self, seconds: float) -> None:
        """A batch's result came back ``seconds`` after it was sent."""

    def warnings(self, rows: FloatArray) -> tuple[str, ...]:
        """The warnings for rows of one request that were flagged (the others have none)."""


class Slots:
    """Capacity of an executor: how many batches may be in flight, and who waits for one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[MicroBatcher] = deque()

    @property
    def free(self) -> bool:
        return self.in_use < self.capacity

    @property
    def idle(self) -> bool:
        return self.in_use == 0

    def wait(self, batcher: MicroBatcher) -> None:
        if batcher not in self._waiters:
            self._waiters.append(batcher)

    def release(self) -> None:
        self.in_use -= 1
        while self._waiters and self.free:
            self._waiters.popleft().on_slot_free()


class _Pending:
    __slots__ = ("future", "gone", "queued", "rows", "want_probabilities")

    def __init__(
        self,
        rows: FloatArray,
        want_probabilities: bool,
        future: asyncio.Future[Prediction],
        queued: float,
    ) -> None:
        self.rows = rows
        self.want_probabilities = want_probabilities
        self.future = future
        self.queued = queued
        """When it was queued (monotonic seconds)."""
        self.gone = False
        """Sent in a batch, or withdrawn: no longer counts as queued."""


class MicroBatcher:
    """Collects rows for one model version and runs them in batches; see the module docstring."""

    def __init__(self, run: RunBatch, slots: Slots, max_rows: int, max_delay: float) -> None:
        self._run = run
        self._slots = slots
        self.max_rows = max_rows
        self.max_delay = max_delay
        self._pending: deque[_Pending] = deque()
        self._pending_rows = 0
        self._live = 0
        """Queued requests not withdrawn (``_pending`` may still hold withdrawn ones)."""
        self.withdrawn = 0
        """Requests cancelled before their rows were sent (for tests and metrics)."""
        self._oldest = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        """Batches sent so far (for tests and metrics)."""
        self.in_flight = 0
        """Batches sent whose results have not come back yet."""
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.observer: BatchObserver | None = None

    @property
    def queued_rows(self) -> int:
        """Rows queued and not yet sent to the executor."""
        return self._pending_rows

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight: safe to unload the model behind it."""
        return self._live == 0 and self.in_flight == 0

    async def drain(self) -> None:
        """Wait until :attr:`idle` (bound it with ``asyncio.timeout``)."""
        while not self.idle:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        if self.idle:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def submit(self, rows: FloatArray, want_probabilities: bool) -> asyncio.Future[Prediction]:
        """Queue validated rows; the future resolves with exactly these rows' outputs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Prediction] = loop.create_future()
        now = time.monotonic()
        if not self._live:
            self._pending.clear()  # only withdrawn requests left
            self._oldest = now
        item = _Pending(rows, want_probabilities, future, now)
        self._pending.append(item)
        self._pending_rows += len(rows)
        self._live += 1
        future.add_done_callback(lambda done: self._withdraw(item, done))
        self._dispatch(loop, waited=False)
        return future

    def _withdraw(self, item: _Pending, future: asyncio.Future[Prediction]) -> None:
        if item.gone or not future.cancelled():
            return
        item.gone = True
        self._pending_rows -= len(item.rows)
        self._live -= 1
        self.withdrawn += 1
        if not self._live:
            self._pending.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._wake_drainers()

    def on_slot_free(self) -> None:
        """A slot freed up after this batcher had to wait for one: send what is queued."""
        self._dispatch(asyncio.get_running_loop(), waited=True)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(asyncio.get_running_loop(), waited=True)

    def _dispatch(self, loop: asyncio.AbstractEventLoop, waited: bool) -> None:
        while self._live:
            if not self._slots.free:
                self._slots.wait(self)
                return
            due = (
                waited
                or self._slots.idle
                or self._pending_rows >= self.max_rows
                or time.monotonic() - self._oldest >= self.max_delay
            )
            if not due:
                if self._timer is None:
                    delay = self._oldest + self.max_delay - time.monotonic()
                    self._timer = loop.call_later(max(0.0, delay), self._on_timer)
                return
            self._send_one()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _send_one(self) -> None:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if item.gone:  # withdrawn
                self._pending.popleft()
                continue
            if batch and rows + len(item.rows) > self.max_rows:
                break
            self._pending.popleft()
            item.gone = True
            batch.append(item)
            rows += len(item.rows)
        self._pending_rows -= rows
        self._live -= len(batch)
        if self._live:
            self._oldest = time.monotonic()
        want = any(item.want_probabilities for item in batch)
        matrix = batch[0].rows if len(batch) == 1 else np.concatenate([i.rows for i in batch])
        self._slots.in_use += 1
        self.batches += 1
        self.in_flight += 1
        sent = time.monotonic()
        try:
            result = self._run(matrix, want)
        except BaseException as exc:
            self.in_flight -= 1
            self._slots.release()
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            self._wake_drainers()
            return
        # Observed once the batch is on its way: the range check overlaps the inference.
        observer = self.observer
        flagged: list[int] = []
        if observer is not None:
            try:
                flagged = observer.batch_sent(matrix, [sent - item.queued for item in batch])
            except Exception:  # metrics must never cost a prediction
                log.exception("batch observer failed")
        result.add_done_callback(lambda done: self._deliver(batch, done, sent, observer, flagged))

    def _deliver(
        self,
        batch: list[_Pending],
        done: asyncio.Future[Prediction],
        sent: float = 0.0,
        observer: BatchObserver | None = None,
        flagged: list[int] | None = None,
    ) -> None:
        if observer is not None and not done.cancelled() and done.exception() is None:
            try:
                observer.batch_done(time.monotonic() - sent)
            except Exception:
                log.exception("batch observer failed")
        self.in_flight -= 1
        self._slots.release()
        self._wake_drainers()
        if done.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = done.exception()
        if error is not None:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        result = done.result()
        start = 0
        for item in batch:
            stop = start + len(item.rows)
            if not item.future.done():
                probabilities = result.probabilities
                warnings: tuple[str, ...] = ()
                if flagged and observer is not None:
                    first = bisect_left(flagged, start)
                    last = bisect_left(flagged, stop, first)
                    if first < last:  # the warnings come from the flagged rows alone
                        try:
                            mine = item.rows[[p - start for p in flagged[first:last]]]
                            warnings = observer.warnings(mine)
                        except Exception:
                            log.exception("batch observer failed")
                contributions = result.contributions
                item.future.set_result(
                    Prediction(
                        result.predictions[start:stop],
                        probabilities[start:stop] if probabilities is not None else None,
                        warnings,
                        contributions[start:stop] if contributions is not None else None,
                    )
                )
            start = stop
