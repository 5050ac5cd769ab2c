"""Bounded admission and request deadlines for the predict path.

A model's queue holds at most a set number of rows waiting for the pool: a request that
would go beyond is shed at once (:class:`OverloadedError`, retryable) rather than queued
without bound, so under overload latency stays bounded and memory too. Every predict
request has a deadline (a default, or the client's ``X-Request-Timeout`` within a limit);
when it passes, the caller gets :class:`DeadlineExceededError` and rows not yet sent to a
worker are withdrawn from the batcher, so the pool never works for a caller that gave up.

The deadline travels in a context variable, set per request by
:class:`serving.deadlines.RequestDeadlineMiddleware`, so transports need not pass it along.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import NamedTuple, TypeVar

from serving.batcher import MicroBatcher
from serving.errors import DeadlineExceededError, OverloadedError

T = TypeVar("T")


class Deadline(NamedTuple):
    at: float
    """Event-loop time (``loop.time()``) by which the answer must be ready."""
    seconds: float
    """The timeout it was made from (for the error message)."""


current_deadline: ContextVar[Deadline | None] = ContextVar("current_deadline", default=None)


def deadline_in(seconds: float) -> Deadline:
    return Deadline(asyncio.get_running_loop().time() + seconds, seconds)


def admit(batcher: MicroBatcher, rows: int, max_queue_rows: int, retry_after: float) -> None:
    """Refuse rows that would take the model's queue past its limit. A request that finds
    the queue empty is always admitted, however big (its size is capped elsewhere)."""
    queued = batcher.queued_rows
    if queued and queued + rows > max_queue_rows:
        raise OverloadedError(
            f"the model's queue is full ({queued} rows waiting, limit {max_queue_rows});"
            " retry later",
            retry_after,
        )


async def within(future: asyncio.Future[T], deadline: Deadline) -> T:
    """The future's result, or DeadlineExceededError once the deadline passes (the future is
    then cancelled: a batcher withdraws rows it has not sent yet). A timer, not
    ``asyncio.wait_for``: this runs for every request and must cost next to nothing."""
    loop = asyncio.get_running_loop()
    remaining = deadline.at - loop.time()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        future.cancel()

    if remaining <= 0:
        expire()
    timer = loop.call_later(max(0.0, remaining), expire) if not expired else None
    try:
        return await future
    except asyncio.CancelledError:
        if not expired:
            raise
        raise DeadlineExceededError(
            f"no predictions within the request's deadline of {deadline.seconds:g} s"
        ) from None
    finally:
        if timer is not None:
            timer.cancel()
