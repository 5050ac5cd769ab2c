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

Faults: a worker that dies (SIGKILL, a crash in native code) or hangs on a batch longer than
``hang_timeout`` (it is then killed) is replaced by a new worker that loads the current model
set. Its batch is retried once, on the next free worker; if that one dies too, the batch
fails with :class:`WorkerLostError` (retryable), so a batch that kills workers cannot take
them all down. A replacement that dies while loading is started again after a growing
delay: once started, the pool never gives up.

Longer than a module should be: the parent side is one state machine (queue, idle workers,
deaths, retries, hot swap) whose parts share its state; the natural next split is the fault
handling (``_on_death`` to ``_check_hung``) into its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from serving.core.errors import PREDICT_FAILED, InferenceError, NotReadyError, WorkerLostError
from serving.execution import worker as worker_process
from serving.execution.executor import ExecutorStatus, Opened
from serving.execution.messages import (
    STOP,
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
from serving.execution.runtime import FloatArray, Prediction, RuntimeName, RuntimePolicy
from serving.execution.shared_arrays import REGION, Inbox, Outbox

__all__ = ["InferencePool", "ModelKey"]

log = logging.getLogger("servewell.pool")


class _Queued:
    """A batch waiting for a worker (``retried``: it was on a worker that died)."""

    __slots__ = ("future", "message", "retried")

    def __init__(
        self, message: Batch, future: asyncio.Future[Prediction], retried: bool = False
    ) -> None:
        self.message = message
        self.future = future
        self.retried = retried


class _Worker:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.ready = False
        self.started = time.monotonic()
        self.pid: int | None = None
        self.job: tuple[int, asyncio.Future[Any]] | None = None
        self.outbox = Outbox(conn)
        """Where large batches go for this worker to read (serving.execution.shared_arrays)."""
        self.inbox = Inbox()
        """Where this worker puts large results."""
        self.batch: _Queued | None = None
        """The predict batch it is running (``job`` covers control messages too)."""
        self.sent = 0.0
        """When the current job was sent (monotonic), for the hang check."""
        self.controls: deque[tuple[Control, asyncio.Future[Any]]] = deque()
        """Load/unload messages waiting until this worker is idle."""

    def release_regions(self) -> None:
        """Drop both shared regions (the worker is gone or being stopped)."""
        self.outbox.release()
        self.inbox.release()


class InferencePool:
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
        self._store_root = str(store_root)
        self._signing_key = signing_key
        self._policy = policy or RuntimePolicy()
        self._models = list(models)
        self.size = size
        self._startup_timeout = startup_timeout
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._queue: deque[_Queued] = deque()
        self._hang_timeout = hang_timeout
        self._replacement_grace = replacement_grace
        """How long a first replacement may load while the pool, with no worker left, still
        reports up (loading takes a second or two; one stuck longer is a failure)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._respawns: list[asyncio.TimerHandle] = []
        self._failed_loads = 0
        """Replacements in a row that died while loading (sets the delay of the next one)."""
        self._started = False
        self._task_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self.failed: dict[ModelKey, str] = {}
        """Models some worker could not load, with the reason."""
        self.runtimes: dict[ModelKey, RuntimeName] = {}
        """The runtime each loaded model runs on in the workers."""
        self._labels: dict[ModelKey, Any] = {}
        """What the label positions workers answer with stand for, per classifier."""
        self.restarts = 0
        """Workers replaced after they died or hung."""
        self.retried_batches = 0
        """Batches sent again after their worker died or hung."""
        self.lost_batches = 0
        """Batches failed with WorkerLostError (their worker died on the retry too)."""
        self.broken: str | None = None
        """Why the pool could not start: a worker died before it finished loading the models."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has loaded the models."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.size):
            self._spawn()
        deadline = time.monotonic() + self._startup_timeout
        while not all(w.ready for w in self._workers):
            if self.broken:
                raise NotReadyError(f"inference workers failed to start: {self.broken}")
            waiter = self._loop.create_future()
            self._ready_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise NotReadyError("inference workers did not start in time") from None
        self._started = True
        self._arm_watchdog()

    @property
    def up(self) -> bool:
        """True when batches will be served: some worker can take one now, or the only ones
        gone are being replaced for the first time in a row (batches wait in the queue,
        bounded by their deadlines, for the second or so a replacement takes to load).
        A worker killed under load must not flap readiness, which would take a one-worker
        replica out of its load balancer for nothing; a replacement that died while loading
        too is a crash loop, and the pool reports down until one finishes loading."""
        if self._closing or self.broken is not None:
            return False
        if self.workers_ready > 0:
            return True
        if self._failed_loads or not self._started:
            return False
        now = time.monotonic()
        return any(
            # Dead with the death not yet read from its pipe (a replacement follows at once),
            # or a replacement loading, for at most the grace period.
            w.ready or now - w.started < self._replacement_grace
            for w in self._workers
        )

    @property
    def replacing(self) -> int:
        """Workers short of the pool's size: dead, loading, or waiting to be started again."""
        return self.size - self.workers_ready if self._started else 0

    @property
    def workers_ready(self) -> int:
        """Workers alive and holding the models."""
        return sum(1 for w in self._workers if w.ready and w.process.is_alive())

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker: ask politely, then kill (workers ignore SIGTERM)."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for handle in self._respawns:
            handle.cancel()
        for worker in self._workers:
            self._forget(worker)
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(STOP)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(1.0)
            with contextlib.suppress(OSError):
                worker.conn.close()
            worker.release_regions()
        self._fail_everything(NotReadyError("the inference pool is shut down"))
        self._workers.clear()

    # -- work ----------------------------------------------------------------------------------

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool
    ) -> asyncio.Future[Prediction]:
        """Run one batch; the future resolves in the event loop with the prediction."""
        if self._loop is None or self._closing or self.broken:
            raise NotReadyError("the inference pool is not running")
        future: asyncio.Future[Prediction] = self._loop.create_future()
        queued = _Queued(Batch(next(self._task_ids), key, rows, want_probabilities), future)
        for worker in self._workers:
            if worker.ready and worker.job is None:
                self._send_batch(worker, queued)
                break
        else:
            self._queue.append(queued)
        return future

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

    def _send_batch(self, worker: _Worker, queued: _Queued) -> None:
        worker.batch = queued
        self._send(worker, queued.message, queued.future)

    def _send(self, worker: _Worker, message: Batch | Control, future: asyncio.Future[Any]) -> None:
        worker.job = (message.task_id, future)
        worker.sent = time.monotonic()
        try:
            if isinstance(message, Batch):  # large rows go through shared memory
                (rows,) = worker.outbox.pack(message.rows)
                if rows is not message.rows:  # the queued batch keeps its rows, for a retry
                    message = Batch(message.task_id, message.key, rows, message.want_probabilities)
            worker.conn.send(message)
        except (OSError, ValueError):
            self._on_death(worker)

    # -- worker management -------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        assert self._loop is not None
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_process.run,
            args=(
                child_end,
                self._store_root,
                self._models,
                self._signing_key,
                self._policy,
                os.getpid(),
            ),
            name="servewell-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        worker = _Worker(process, parent_end)
        self._workers.append(worker)
        self._loop.add_reader(parent_end.fileno(), self._on_readable, worker)
        # uvloop makes a watched fd non-blocking, but Connection.recv/send expect a blocking
        # one (a big message would fail half-way). Reading only when readable and writing only
        # to an idle worker, which is reading, keeps the loop from waiting on it for long.
        os.set_blocking(parent_end.fileno(), True)
        return worker

    def _forget(self, worker: _Worker) -> None:
        if self._loop is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(worker.conn.fileno())

    def _on_readable(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._on_message(worker, worker.conn.recv())
        except (EOFError, OSError):
            self._on_death(worker)

    def _on_message(self, worker: _Worker, message: FromWorker) -> None:
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

    def _on_ready(self, worker: _Worker, ready: Ready) -> None:
        worker.ready = True
        worker.pid = ready.pid
        for key, reason in ready.failed.items():
            self.failed.setdefault(key, reason)
        self.runtimes.update(ready.runtimes)
        self._labels.update(ready.labels)
        self._failed_loads = 0
        self._wake_starters()

    def _on_control_reply(self, worker: _Worker, reply: ControlReply) -> None:
        self._labels.update(reply.labels)
        job, worker.job = worker.job, None
        if job is not None and job[0] == reply.task_id and not job[1].done():
            job[1].set_result((reply.ok, reply.payload))
            if not reply.ok:
                log.error("worker %s could not load a model: %s", worker.pid, reply.payload)

    def _on_answer(self, worker: _Worker, answer: Answer | Failure) -> None:
        job, worker.job = worker.job, None
        batch, worker.batch = worker.batch, None
        if job is None or job[0] != answer.task_id or job[1].done():
            return
        if isinstance(answer, Failure):
            job[1].set_exception(InferenceError(PREDICT_FAILED, detail=answer.reason))
            return
        assert batch is not None  # an answer's job is its batch
        try:
            result = self._result(worker, batch.message.key, answer)
        except Exception as exc:  # a protocol bug must fail the batch, not hang it
            log.exception("unreadable answer from worker %s", worker.pid)
            job[1].set_exception(
                InferenceError(PREDICT_FAILED, detail=f"{type(exc).__name__}: {exc}")
            )
        else:
            job[1].set_result(result)

    def _result(self, worker: _Worker, key: ModelKey, answer: Answer) -> Prediction:
        """A batch's answer as the event loop keeps it: out of the worker's shared region
        (which it reuses for its next answer), labels looked up from their positions."""
        inbox = worker.inbox
        values = inbox.unpack(answer.values, copy=not answer.indexed)
        if answer.indexed:  # the lookup makes a new array: nothing to copy first
            values = self._labels[key].take(values, axis=0)
        return Prediction(values, inbox.unpack(answer.probabilities, copy=True))

    def _feed(self, worker: _Worker) -> None:
        """Give an idle ready worker its next message: control messages first, then batches
        (skipping those whose caller gave up meanwhile)."""
        if worker.job is not None or not worker.ready:
            return
        if worker.controls:
            self._send(worker, *worker.controls.popleft())
            return
        while self._queue:
            queued = self._queue.popleft()
            if not queued.future.done():
                self._send_batch(worker, queued)
                return

    def _on_death(self, worker: _Worker, why: str = "died") -> None:
        if worker not in self._workers:
            return
        self._forget(worker)
        self._workers.remove(worker)
        with contextlib.suppress(OSError):
            worker.conn.close()
        worker.release_regions()
        worker.process.join(0.1)
        if worker.process.is_alive():  # the pipe broke but the process lingers
            worker.process.kill()
            worker.process.join(1.0)
        self._settle(worker, why)
        if self._closing:
            return
        code = worker.process.exitcode
        if not self._started:
            # It died while loading models at start: the service must not come up half-working.
            self.broken = f"worker {worker.process.pid} exited with code {code} while loading"
            log.error("inference %s", self.broken)
            self._wake_starters()
            self._fail_everything(NotReadyError(f"the inference pool is down: {self.broken}"))
            return
        self._replace(worker, why, code)
        for other in self._workers:
            self._feed(other)

    def _settle(self, worker: _Worker, why: str) -> None:
        """Retry or fail what a dead worker was doing, and fail its waiting control messages."""
        batch, worker.batch = worker.batch, None
        if batch is not None and not batch.future.done():
            if batch.retried or self._closing:
                self.lost_batches += 1
                batch.future.set_exception(
                    WorkerLostError(f"the inference worker running this batch {why}, twice")
                )
            else:  # once more, first in line, on the next free worker
                self.retried_batches += 1
                batch.retried = True
                self._queue.appendleft(batch)
        elif worker.job is not None and not worker.job[1].done():
            worker.job[1].set_exception(InferenceError(f"the inference worker {why}"))
        for _, future in worker.controls:
            if not future.done():
                future.set_exception(InferenceError(f"the inference worker {why}"))

    def _replace(self, worker: _Worker, why: str, code: int | None) -> None:
        """Start a worker in place of a dead one: at once, or after a growing delay when the
        dead one was itself a replacement that died while loading."""
        self.restarts += 1
        if worker.ready:
            log.error(
                "inference worker %s %s (exit code %s); starting a new one", worker.pid, why, code
            )
            self._spawn()
        else:
            # A replacement died while loading: try again, waiting longer each time in a row.
            self._failed_loads += 1
            delay = min(10.0, 0.25 * 2**self._failed_loads)
            log.error(
                "inference worker %s %s while loading (exit code %s); new one in %.1f s",
                worker.process.pid,
                why,
                code,
                delay,
            )
            assert self._loop is not None
            self._respawns.append(self._loop.call_later(delay, self._respawn))

    def _respawn(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._respawns = [h for h in self._respawns if h.when() > now]
        if not self._closing and len(self._workers) < self.size:
            self._spawn()

    def _arm_watchdog(self) -> None:
        if self._hang_timeout is None or self._loop is None or self._closing:
            return
        period = min(1.0, self._hang_timeout / 2)
        self._watchdog = self._loop.call_later(period, self._check_hung)

    def _check_hung(self) -> None:
        """Kill a worker stuck on one batch past the hang timeout, or one that takes longer
        than the startup timeout to load the models; either is then replaced."""
        now = time.monotonic()
        assert self._hang_timeout is not None
        for worker in list(self._workers):
            stuck = worker.batch is not None and now - worker.sent > self._hang_timeout
            slow_start = not worker.ready and now - worker.started > self._startup_timeout
            if stuck or slow_start:
                log.error(
                    "inference worker %s %s; killing it",
                    worker.pid or worker.process.pid,
                    "hangs on a batch" if stuck else "did not finish loading in time",
                )
                worker.process.kill()
                worker.process.join(1.0)
                self._on_death(worker, "hung" if stuck else "did not start")
        self._arm_watchdog()

    def _wake_starters(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fail_everything(self, error: Exception) -> None:
        for worker in self._workers:
            if worker.job is not None and not worker.job[1].done():
                worker.job[1].set_exception(error)
            for _, future in worker.controls:
                if not future.done():
                    future.set_exception(error)
        while self._queue:
            future = self._queue.popleft().future
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
