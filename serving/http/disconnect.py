"""Stop working for a client that hung up.

After a request's body is read, nothing else reads from the connection, so a client that
disconnects while its rows wait in a queue would still have them predicted. This watches for
``http.disconnect`` meanwhile and cancels the work (a batcher withdraws rows not yet sent).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready; there is no one to answer."""


WATCH_AFTER_S = 0.05
"""Start watching only for work that takes longer: most requests finish sooner, and a
watcher task per request would cost them measurable throughput."""


class _Watches:
    """The requests of one event loop awaiting their answer; one periodic timer gives a
    disconnect watcher to those that have waited :data:`WATCH_AFTER_S` (a timer per request
    measurably costs throughput)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Task[Any], tuple[float, Receive]] = {}
        self.watchers: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        self.gone: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.waiting[task] = (self.loop.time(), receive)
        if self.timer is None:
            self.timer = self.loop.call_later(WATCH_AFTER_S, self.sweep)

    def sweep(self) -> None:
        self.timer = None
        due = self.loop.time() - WATCH_AFTER_S
        for task, (since, receive) in self.waiting.items():
            if since <= due and task not in self.watchers:
                self.watchers[task] = asyncio.ensure_future(self._watch(task, receive))
        if len(self.waiting) > len(self.watchers):
            self.timer = self.loop.call_later(WATCH_AFTER_S, self.sweep)

    async def _watch(self, task: asyncio.Task[Any], receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.add(task)
        task.cancel()

    def remove(self, task: asyncio.Task[Any]) -> None:
        self.waiting.pop(task, None)
        self.gone.discard(task)
        watcher = self.watchers.pop(task, None)
        if watcher is not None:
            watcher.cancel()


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watches] = (
    weakref.WeakKeyDictionary()
)


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGoneError.
    Call only after the whole body was received."""
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    watches = _WATCHES.get(loop)
    if watches is None:
        watches = _WATCHES[loop] = _Watches(loop)
    watches.add(task, receive)
    try:
        return await work
    except asyncio.CancelledError:
        if task in watches.gone:
            task.uncancel()
            raise ClientGoneError from None
        raise
    finally:
        watches.remove(task)
