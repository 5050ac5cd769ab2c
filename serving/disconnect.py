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


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGoneError.
    Call only after the whole body was received."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGoneError from None
        raise
    finally:
        watcher.cancel()
