"""The parent's handle on one inference worker process (serving.execution.worker).

A handle is the process, the parent's end of its socketpair, the two shared regions for large
arrays (serving.execution.shared_arrays) and what the worker is doing: the message in flight
and the control messages waiting until it is idle. The pool (serving.execution.pool) routes
work through handles; supervision (serving.execution.supervision) starts and reaps them. Only
this module starts a worker process.

Handles are plain records on purpose: the per-batch path reads and writes their fields
directly, with no method call between a batch and the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from serving.execution import worker as worker_process
from serving.execution.messages import STOP, Batch, Control
from serving.execution.runtime import Prediction
from serving.execution.shared_arrays import Inbox, Outbox

__all__ = ["QueuedBatch", "WorkerHandle"]


class QueuedBatch:
    """A batch waiting for a worker (``retried``: it was on a worker that died)."""

    __slots__ = ("future", "message", "retried")

    def __init__(
        self, message: Batch, future: asyncio.Future[Prediction], retried: bool = False
    ) -> None:
        self.message = message
        self.future = future
        self.retried = retried


class WorkerHandle:
    """One worker process as the parent sees it."""

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
        self.batch: QueuedBatch | None = None
        """The predict batch it is running (``job`` covers control messages too)."""
        self.sent = 0.0
        """When the current job was sent (monotonic), for the hang check."""
        self.explaining: QueuedBatch | None = None
        """The explained batch its explaining thread is running, beside ``job``."""
        self.explain_sent = 0.0
        """When that batch was sent (monotonic), for the hang check."""
        self.controls: deque[tuple[Control, asyncio.Future[Any]]] = deque()
        """Load/unload messages waiting until this worker is idle."""

    @classmethod
    def spawn(
        cls,
        context: SpawnContext,
        loop: asyncio.AbstractEventLoop,
        on_readable: Callable[[WorkerHandle], None],
        worker_args: tuple[Any, ...],
    ) -> WorkerHandle:
        """Start a worker process (``worker_args`` after its end of the pipe, for
        serving.execution.worker.run) and have ``loop`` call ``on_readable`` with its handle
        whenever its pipe has something to read."""
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=worker_process.run,
            args=(child_end, *worker_args),
            name="servewell-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        handle = cls(process, parent_end)
        loop.add_reader(parent_end.fileno(), on_readable, handle)
        # uvloop makes a watched fd non-blocking, but Connection.recv/send expect a blocking
        # one (a big message would fail half-way). Reading only when readable and writing only
        # to an idle worker, which is reading, keeps the loop from waiting on it for long.
        os.set_blocking(parent_end.fileno(), True)
        return handle

    def stop_reading(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Stop watching the pipe (the worker is gone or being stopped)."""
        if loop is not None:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(self.conn.fileno())

    def ask_to_stop(self) -> None:
        """Tell the worker to exit after what it is doing (it ignores SIGTERM)."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(STOP)

    def join_or_kill(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the process to exit, then kill it."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def close_pipe(self) -> None:
        """Close the parent's end of the pipe and drop both shared regions."""
        with contextlib.suppress(OSError):
            self.conn.close()
        self.release_regions()

    def release_regions(self) -> None:
        """Drop both shared regions (the worker is gone or being stopped)."""
        self.outbox.release()
        self.inbox.release()
