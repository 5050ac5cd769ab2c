"""Bounded admission and request deadlines for the predict path.

A model's queue holds at most a set number of rows waiting for the pool: a request that
would go beyond is shed at once (:class:`OverloadedError`, retryable) rather than queued
without bound, so under overload latency stays bounded and memory too. Every predict
request has a deadline (a default, or the client's ``X-Request-Timeout`` within a limit);
when it passes, the caller gets :class:`DeadlineExceededError` and rows not yet sent to a
worker are withdrawn from the batcher, so the pool never works for a caller that gave up.

The deadline and the edge's admission ticket travel in the request's
:class:`serving.core.context.RequestContext`, passed down as an argument.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, TypeVar

from serving.core.batcher import MicroBatcher
from serving.core.context import Deadline
from serving.core.errors import DeadlineExceededError, OverloadedError
from serving.core.shedding import Ticket

T = TypeVar("T")


def deadline_in(seconds: float) -> Deadline:
    return Deadline(asyncio.get_running_loop().time() + seconds, seconds)


def admit(
    batcher: MicroBatcher,
    rows: int,
    max_queue_rows: int,
    retry_after: float,
    ticket: Ticket | None = None,
) -> None:
    """Refuse rows that would take the model's queue past its limit. A request that finds
    the queue empty is always admitted, however big (its size is capped elsewhere). The
    edge's ``ticket`` learns the row count of what it admitted."""
    queued = batcher.queued_rows
    if queued and queued + rows > max_queue_rows:
        raise OverloadedError(
            f"the model's queue is full ({queued} rows waiting, limit {max_queue_rows});"
            " retry later",
            retry_after,
        )
    if ticket is not None:
        ticket.queued(rows)


SWEEP_S = 0.05
"""How often one timer per event loop checks the deadlines it watches (a deadline may pass by
up to this much before it is acted on)."""


class Sweeper:
    """Cancels the futures and tasks of one event loop whose deadline has passed, with one
    periodic timer: a timer per request measurably costs throughput on the hot path. Used for
    awaited predictions (:func:`within`) and for request bodies still arriving (the edge)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: dict[asyncio.Future[Any], float] = {}
        self.expired: set[asyncio.Future[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, target: asyncio.Future[Any], at: float) -> None:
        """Cancel ``target`` (a future or a task) at the first sweep after the loop's time
        reaches ``at``."""
        self.watched[target] = at
        if self.timer is None:
            self.timer = self.loop.call_later(SWEEP_S, self.sweep)

    def expire(self, target: asyncio.Future[Any]) -> None:
        """Cancel ``target`` now, as past its deadline."""
        self.watched.pop(target, None)
        self.expired.add(target)
        target.cancel()

    def sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        for target, at in list(self.watched.items()):
            if at <= now:
                self.expire(target)
        if self.watched:
            self.timer = self.loop.call_later(SWEEP_S, self.sweep)

    def release(self, target: asyncio.Future[Any]) -> bool:
        """Stop watching ``target``; whether its deadline had passed (it was cancelled)."""
        self.watched.pop(target, None)
        if target in self.expired:
            self.expired.discard(target)
            return True
        return False


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = (
    weakref.WeakKeyDictionary()
)


def sweeper() -> Sweeper:
    """The running event loop's sweeper."""
    loop = asyncio.get_running_loop()
    found = _SWEEPERS.get(loop)
    if found is None:
        found = _SWEEPERS[loop] = Sweeper(loop)
    return found


async def within(future: asyncio.Future[T], deadline: Deadline) -> T:
    """The future's result, or DeadlineExceededError once the deadline passes (the future is
    then cancelled: a batcher withdraws rows it has not sent yet)."""
    watcher = sweeper()
    if deadline.at <= watcher.loop.time():
        watcher.expire(future)  # already past: no wait at all
    else:
        watcher.watch(future, deadline.at)
    try:
        return await future
    except asyncio.CancelledError:
        if not watcher.release(future):
            raise
        raise DeadlineExceededError(
            f"no predictions within the request's deadline of {deadline.seconds:g} s"
        ) from None
    finally:
        watcher.release(future)
