"""Stop working for a client that hung up.

After a request's body is read, nothing else reads from the connection, so a client that
disconnects while its rows wait in a queue would still have them predicted. This watches for
``http.disconnect`` meanwhile and cancels the work (a batcher withdraws rows not yet sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready; there is no one to answer."""


WATCH_AFTER_S = 0.05
"""Start watching only for work that takes longer: most requests finish sooner, and a
watcher task per request would cost them measurable throughput."""


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGoneError.
    Call only after the whole body was received."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Future[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGoneError from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
