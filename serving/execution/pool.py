"""A process pool for inference that keeps the event loop free: the parent side.

Each worker (serving.execution.worker) is a ``spawn``-ed process that loads every served model
once at start and then answers batches sent over its own socketpair, as the records of
serving.execution.messages: rows in, arrays out (a classifier's labels as their positions in its
classes, looked up here: numbers cross, not one object per row). Large arrays travel through
shared memory instead of the socket (serving.execution.shared_arrays), so writing a big batch
does not block the event loop. Models are never pickled per request.
Control messages (load, unload) change a running worker's models (hot swap); a worker started
later, e.g. after a crash, loads the current set. The parent reads replies with
``loop.add_reader`` (no helper threads), sends work only to idle workers and queues the rest,
and on close stops every worker it started, so no process outlives the service.
Explained batches have a queue of their own: a worker runs one in a thread beside its batches
(serving.execution.worker), so it stays idle for them, and an explained batch waits only for a
worker to finish the batch it is on.

This module routes the work: the queue, batches and control messages to idle workers, answers
back to their futures. Each worker is a handle (serving.execution.worker_handle); starting,
health, replacing dead or hung workers and stopping them is the base class
(serving.execution.supervision). A batch on a worker that dies is retried once, on the next
free worker; if that one dies too, the batch fails with :class:`WorkerLostError` (retryable),
so a batch that kills workers cannot take them all down.

The per-batch path (``submit`` → ``_send_batch`` → ``_send`` → ``_write``, then ``_on_readable`` →
``_on_message`` → ``_on_answer`` → ``_result``) reads the handles' fields and writes their pipe
directly: keep it free of further calls and allocations.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.core.errors import PREDICT_FAILED, InferenceError, NotReadyError, WorkerLostError
from serving.execution.executor import ExecutorStatus, Opened, failure_error
from serving.execution.messages import (
    Answer,
    Batch,
    Control,
    ControlReply,
    Failure,
    FromWorker,
    Load,
    ModelKey,
    Ready,
    Unload,
)
from serving.execution.runtime import (
    Contributions,
    FloatArray,
    Prediction,
    RuntimeName,
    RuntimePolicy,
)
from serving.execution.shared_arrays import REGION
from serving.execution.supervision import SupervisedWorkers
from serving.execution.worker_handle import QueuedBatch, WorkerHandle

__all__ = ["InferencePool", "ModelKey"]

log = logging.getLogger("servewell.pool")


class InferencePool(SupervisedWorkers):
    """Worker processes that each hold every served model; see the module docstring."""

    def __init__(
        self,
        store_root: Path,
        models: list[ModelKey],
        size: int,
        startup_timeout: float = 120.0,
        *,
        signing_key: bytes | None = None,
        policy: RuntimePolicy | None = None,
        hang_timeout: float | None = None,
        replacement_grace: float = 30.0,
    ) -> None:
        super().__init__(
            store_root,
            models,
            size,
            startup_timeout,
            signing_key=signing_key,
            policy=policy,
            hang_timeout=hang_timeout,
            replacement_grace=replacement_grace,
        )
        self._queue: deque[QueuedBatch] = deque()
        self._explain_queue: deque[QueuedBatch] = deque()
        self._task_ids = itertools.count()
        self.failed: dict[ModelKey, str] = {}
        """Models some worker could not load, with the reason."""
        self.runtimes: dict[ModelKey, RuntimeName] = {}
        """The runtime each loaded model runs on in the workers."""
        self._labels: dict[ModelKey, Any] = {}
        """What the label positions workers answer with stand for, per classifier."""
        self.retried_batches = 0
        """Batches sent again after their worker died or hung."""
        self.lost_batches = 0
        """Batches failed with WorkerLostError (their worker died on the retry too)."""

    # -- work ----------------------------------------------------------------------------------

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool, explain: bool = False
    ) -> asyncio.Future[Prediction]:
        """Run one batch; the future resolves in the event loop with the prediction."""
        if self._loop is None or self._closing or self.broken:
            raise NotReadyError("the inference pool is not running")
        future: asyncio.Future[Prediction] = self._loop.create_future()
        batch = Batch(next(self._task_ids), key, rows, want_probabilities, explain)
        queued = QueuedBatch(batch, future)
        if explain:
            self._submit_explained(queued)
            return future
        for worker in self._workers:
            if worker.ready and worker.job is None:
                self._send_batch(worker, queued)
                break
        else:
            self._queue.append(queued)
        return future

    def _submit_explained(self, queued: QueuedBatch) -> None:
        for worker in self._workers:
            if worker.ready and worker.job is None and worker.explaining is None:
                self._send_explained(worker, queued)
                return
        self._explain_queue.append(queued)

    async def load_model(self, key: ModelKey) -> RuntimeName:
        """Load a model into every running worker (and into every worker started later).

        Raises InferenceError with the reason when a worker cannot load it; the model is then
        unloaded again everywhere, so no worker holds a half-deployed version.
        """
        if key not in self._models:
            self._models.append(key)
        self.failed.pop(key, None)
        results = await self._broadcast(Load, key)
        errors = [payload for ok, payload in results if not ok]
        if errors:
            await self.unload_model(key)
            raise InferenceError(errors[0])
        runtime = next((payload for _, payload in results if payload is not None), None)
        runtime = runtime or self.runtimes.get(key) or "sklearn"
        self.runtimes[key] = runtime
        return runtime

    async def unload_model(self, key: ModelKey) -> None:
        """Drop a model from every worker. Batches already sent to a worker finish first (each
        worker handles its pipe in order); the caller must not submit new ones for the key."""
        if key in self._models:
            self._models.remove(key)
        self.runtimes.pop(key, None)
        self.failed.pop(key, None)
        await self._broadcast(Unload, key)
        self._labels.pop(key, None)

    async def _broadcast(
        self, op: type[Load] | type[Unload], key: ModelKey
    ) -> list[tuple[bool, Any]]:
        """Send a control message to every worker; each answers ``(ok, runtime or reason)``.
        A worker that dies meanwhile is replaced by one that loads the current model set, so
        its answer counts as done, ``(True, None)``."""
        if self._loop is None or self._closing or self.broken:
            raise NotReadyError("the inference pool is not running")
        futures: list[asyncio.Future[Any]] = []
        for worker in list(self._workers):
            future: asyncio.Future[Any] = self._loop.create_future()
            message = op(next(self._task_ids), key)
            if worker.ready and worker.job is None:
                self._send(worker, message, future)
            else:
                worker.controls.append((message, future))
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [(True, None) if isinstance(r, BaseException) else r for r in results]

    def _send_batch(self, worker: WorkerHandle, queued: QueuedBatch) -> None:
        worker.batch = queued
        self._send(worker, queued.message, queued.future)

    def _send_explained(self, worker: WorkerHandle, queued: QueuedBatch) -> bool:
        """Send an explained batch to an idle worker, which stays idle: its explaining
        thread answers later. False when the worker turned out dead."""
        worker.explaining = queued
        worker.explain_sent = time.monotonic()
        return self._write(worker, queued.message)

    def _send(
        self, worker: WorkerHandle, message: Batch | Control, future: asyncio.Future[Any]
    ) -> None:
        worker.job = (message.task_id, future)
        worker.sent = time.monotonic()
        self._write(worker, message)

    def _write(self, worker: WorkerHandle, message: Batch | Control) -> bool:
        try:
            if isinstance(message, Batch):  # large rows go through shared memory
                (rows,) = worker.outbox.pack(message.rows)
                if rows is not message.rows:  # the queued batch keeps its rows, for a retry
                    message = message._replace(rows=rows)
            worker.conn.send(message)
        except (OSError, ValueError):
            self._on_death(worker)
            return False
        return True

    # -- what workers send ---------------------------------------------------------------------

    def _on_readable(self, worker: WorkerHandle) -> None:
        try:
            while worker.conn.poll():
                self._on_message(worker, worker.conn.recv())
        except (EOFError, OSError):
            self._on_death(worker)

    def _on_message(self, worker: WorkerHandle, message: FromWorker) -> None:
        if isinstance(message, (Answer, Failure)):
            self._on_answer(worker, message)
        elif isinstance(message, ControlReply):
            self._on_control_reply(worker, message)
        elif isinstance(message, Ready):
            self._on_ready(worker, message)
        elif message[0] == REGION:
            worker.inbox.attach(worker.conn, message[1])
            return
        self._feed(worker)

    def _on_ready(self, worker: WorkerHandle, ready: Ready) -> None:
        for key, reason in ready.failed.items():
            self.failed.setdefault(key, reason)
        self.runtimes.update(ready.runtimes)
        self._labels.update(ready.labels)
        self._worker_ready(worker, ready.pid)

    def _on_control_reply(self, worker: WorkerHandle, reply: ControlReply) -> None:
        self._labels.update(reply.labels)
        job, worker.job = worker.job, None
        if job is not None and job[0] == reply.task_id and not job[1].done():
            job[1].set_result((reply.ok, reply.payload))
            if not reply.ok:
                log.error("worker %s could not load a model: %s", worker.pid, reply.payload)

    def _on_answer(self, worker: WorkerHandle, answer: Answer | Failure) -> None:
        batch: QueuedBatch | None = worker.explaining
        if batch is not None and batch.message.task_id == answer.task_id:
            worker.explaining, future = None, batch.future
        else:
            job, worker.job = worker.job, None
            batch, worker.batch = worker.batch, None
            if job is None or job[0] != answer.task_id:
                return
            future = job[1]
        if future.done():
            return
        if isinstance(answer, Failure):
            future.set_exception(failure_error(answer.reason, answer.unexplained))
            return
        assert batch is not None  # an answer's job is its batch
        try:
            result = self._result(worker, batch.message.key, answer)
        except Exception as exc:  # a protocol bug must fail the batch, not hang it
            log.exception("unreadable answer from worker %s", worker.pid)
            future.set_exception(
                InferenceError(PREDICT_FAILED, detail=f"{type(exc).__name__}: {exc}")
            )
        else:
            future.set_result(result)

    def _result(self, worker: WorkerHandle, key: ModelKey, answer: Answer) -> Prediction:
        """A batch's answer as the event loop keeps it: out of the worker's shared region
        (which it reuses for its next answer), labels looked up from their positions."""
        inbox = worker.inbox
        values = inbox.unpack(answer.values, copy=not answer.indexed)
        if answer.indexed:  # the lookup makes a new array: nothing to copy first
            values = self._labels[key].take(values, axis=0)
        probabilities = inbox.unpack(answer.probabilities, copy=True)
        if answer.contributions is None:
            return Prediction(values, probabilities)
        return Prediction(values, probabilities, contributions=Contributions(*answer.contributions))

    def _feed(self, worker: WorkerHandle) -> None:
        """Give an idle ready worker its next message: control messages first, then batches
        (skipping those whose caller gave up meanwhile)."""
        if worker.job is not None or not worker.ready:
            return
        if worker.controls:
            self._send(worker, *worker.controls.popleft())
            return
        while self._explain_queue and worker.explaining is None:
            queued = self._explain_queue.popleft()
            if not queued.future.done() and not self._send_explained(worker, queued):
                return  # the worker died: its batch is queued again
        while self._queue:
            queued = self._queue.popleft()
            if not queued.future.done():
                self._send_batch(worker, queued)
                return

    # -- faults (the hooks of SupervisedWorkers) -------------------------------------------------

    def _settle(self, worker: WorkerHandle, why: str) -> None:
        """Retry or fail what a dead worker was doing, and fail its waiting control messages."""
        batch, worker.batch = worker.batch, None
        if batch is not None:
            self._retry(batch, self._queue, why)
        elif worker.job is not None and not worker.job[1].done():
            worker.job[1].set_exception(InferenceError(f"the inference worker {why}"))
        explained, worker.explaining = worker.explaining, None
        if explained is not None:
            self._retry(explained, self._explain_queue, why)
        for _, future in worker.controls:
            if not future.done():
                future.set_exception(InferenceError(f"the inference worker {why}"))

    def _retry(self, batch: QueuedBatch, queue: deque[QueuedBatch], why: str) -> None:
        """Queue a dead worker's batch once more, first in line, or fail it the second time."""
        if batch.future.done():
            return
        if batch.retried or self._closing:
            self.lost_batches += 1
            batch.future.set_exception(
                WorkerLostError(f"the inference worker running this batch {why}, twice")
            )
        else:
            self.retried_batches += 1
            batch.retried = True
            queue.appendleft(batch)

    def _fail_everything(self, error: Exception) -> None:
        for worker in self._workers:
            if worker.job is not None and not worker.job[1].done():
                worker.job[1].set_exception(error)
            if worker.explaining is not None and not worker.explaining.future.done():
                worker.explaining.future.set_exception(error)
            for _, future in worker.controls:
                if not future.done():
                    future.set_exception(error)
        for queue in (self._queue, self._explain_queue):
            while queue:
                future = queue.popleft().future
                if not future.done():
                    future.set_exception(error)

    # -- the Executor protocol (serving.execution.executor) -----------------------------------

    async def open(self, keys: Sequence[ModelKey]) -> Opened:
        """Start the workers holding ``keys``; versions a worker could not load are reported."""
        self._models = list(keys)
        await self.start()
        return Opened(dict(self.runtimes), dict(self.failed))

    def status(self) -> ExecutorStatus:
        return ExecutorStatus(
            up=self.up,
            size=self.size,
            workers=len(self.pids),
            workers_ready=self.workers_ready,
            replacing=self.replacing,
            restarts=self.restarts,
        )
