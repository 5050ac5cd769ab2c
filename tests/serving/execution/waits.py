"""Waiting inside the event loop in the pool tests, bounded so that a lost worker fails a test
instead of hanging it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


ANSWER_S = 60.0
"""Longest wait for a batch's answer: a replacement worker starts in seconds even on a busy
box, and a pool that lost every worker without replacing it must fail a test, not hang it."""


async def answered(pending: Awaitable[T]) -> T:
    return await asyncio.wait_for(pending, ANSWER_S)


async def until(condition: Any, seconds: float = 60.0) -> None:
    """Poll a condition from inside the event loop (the pool needs the loop to run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
