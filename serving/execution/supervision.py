"""Keeping the inference pool's worker processes at size: start, health, faults, stop.

:class:`SupervisedWorkers` is the base of serving.execution.pool.InferencePool: it owns the
worker handles (serving.execution.worker_handle) and the restart policy, and leaves what the
workers were doing to the pool through four hooks (:meth:`~SupervisedWorkers._on_readable`,
:meth:`~SupervisedWorkers._settle`, :meth:`~SupervisedWorkers._feed`,
:meth:`~SupervisedWorkers._fail_everything`).

Faults: a worker that dies (SIGKILL, a crash in native code) or hangs on a batch longer than
``hang_timeout`` (it is then killed) is replaced by a new worker that loads the current model
set; the pool retries or fails its batch (``_settle``). A replacement that dies while loading is
started again after a growing delay: once started, the pool never gives up. A worker that dies
while the pool starts makes it broken instead: the service must not come up half-working.

A base class rather than an object the pool holds: the pool reads the worker list on every
batch and a death needs the pool's queue (to retry the batch), so two objects would each hold a
reference to the other; one state with four hooks keeps every field in one place.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import multiprocessing
import os
import time
from pathlib import Path

from serving.core.errors import NotReadyError
from serving.execution.messages import ModelKey
from serving.execution.runtime import RuntimePolicy
from serving.execution.worker_handle import WorkerHandle

__all__ = ["SupervisedWorkers"]

log = logging.getLogger("servewell.pool")


class SupervisedWorkers(abc.ABC):
    """``size`` worker processes holding ``models``, replaced when they die or hang."""

    def __init__(
        self,
        store_root: Path,
        models: list[ModelKey],
        size: int,
        startup_timeout: float,
        *,
        signing_key: bytes | None,
        policy: RuntimePolicy | None,
        hang_timeout: float | None,
        replacement_grace: float,
    ) -> None:
        self._store_root = str(store_root)
        self._signing_key = signing_key
        self._policy = policy or RuntimePolicy()
        self._models = list(models)
        """The model set a worker started now loads."""
        self.size = size
        self._startup_timeout = startup_timeout
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[WorkerHandle] = []
        self._hang_timeout = hang_timeout
        self._replacement_grace = replacement_grace
        """How long a first replacement may load while the pool, with no worker left, still
        reports up (loading takes a second or two; one stuck longer is a failure)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._respawns: list[asyncio.TimerHandle] = []
        self._failed_loads = 0
        """Replacements in a row that died while loading (sets the delay of the next one)."""
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self.restarts = 0
        """Workers replaced after they died or hung."""
        self.broken: str | None = None
        """Why the pool could not start: a worker died before it finished loading the models."""

    # -- hooks: what the workers were doing belongs to the pool -----------------------------

    @abc.abstractmethod
    def _on_readable(self, worker: WorkerHandle) -> None:
        """Read what ``worker`` sent (called by the event loop)."""

    @abc.abstractmethod
    def _settle(self, worker: WorkerHandle, why: str) -> None:
        """Retry or fail what a dead worker was doing."""

    @abc.abstractmethod
    def _feed(self, worker: WorkerHandle) -> None:
        """Give an idle ready worker its next message, if any."""

    @abc.abstractmethod
    def _fail_everything(self, error: Exception) -> None:
        """Fail every batch and control message, sent or waiting."""

    # -- lifecycle ----------------------------------------------------------------------------

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

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker: ask politely, then kill (workers ignore SIGTERM)."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for handle in self._respawns:
            handle.cancel()
        for worker in self._workers:
            worker.stop_reading(self._loop)
            worker.ask_to_stop()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join_or_kill(max(0.0, deadline - time.monotonic()))
            worker.close_pipe()
        self._fail_everything(NotReadyError("the inference pool is shut down"))
        self._workers.clear()

    # -- health -------------------------------------------------------------------------------

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

    # -- workers coming and going -------------------------------------------------------------

    def _spawn(self) -> WorkerHandle:
        assert self._loop is not None
        args = (self._store_root, self._models, self._signing_key, self._policy, os.getpid())
        worker = WorkerHandle.spawn(self._context, self._loop, self._on_readable, args)
        self._workers.append(worker)
        return worker

    def _worker_ready(self, worker: WorkerHandle, pid: int) -> None:
        """A worker finished loading: it takes work, and a crash loop, if any, is over."""
        worker.ready = True
        worker.pid = pid
        self._failed_loads = 0
        self._wake_starters()

    def _wake_starters(self) -> None:
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_death(self, worker: WorkerHandle, why: str = "died") -> None:
        if worker not in self._workers:
            return
        worker.stop_reading(self._loop)
        self._workers.remove(worker)
        worker.close_pipe()
        worker.join_or_kill(0.1)  # the pipe broke but the process may linger
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

    def _replace(self, worker: WorkerHandle, why: str, code: int | None) -> None:
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

    # -- the watchdog -------------------------------------------------------------------------

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
            stuck = (worker.batch is not None and now - worker.sent > self._hang_timeout) or (
                worker.explaining is not None and now - worker.explain_sent > self._hang_timeout
            )
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
