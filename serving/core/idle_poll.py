"""Keeping the event loop awake between a sequential client's requests.

A server process that has answered its last request in flight goes to sleep in the kernel
until the next one arrives, and its CPU with it. A client that sends its next request as soon
as it has the answer (a loop of calls, a batch job, a benchmark at c=1) then finds a CPU that
must be woken first, with its caches cooled: on this project's 2-core VM a single-row
prediction took 114 µs after a 200 µs sleep against 69 µs back to back (the ASGI app called
in-process), and half of the c=1 latency was that.

So after the last request in flight, the loop keeps polling its sockets (one callback per
iteration, so the wait for I/O returns at once) for up to ``window_s``, when:

* the requests came one at a time: none overlapped since the process was last idle, none was
  ready in the same loop iteration as the end of the one before, and each came on the same
  connection as the one before. Under concurrent load a process that goes idle for a moment
  has batches to amortise its wake-ups, and the CPU it would spend polling is better left to
  whatever else is runnable. Overlap alone does not show that load: a single-row request
  answered in the loop itself begins and ends within one step of its task, so fifty
  connections' requests never overlap: with that rule alone the poll ran 89 ms in 5 s at
  c=50 (two processes), with the last two conditions none;
* the gap before the request that just finished was within the window too: a client that paused
  once is expected to pause again, and requests far apart never cost a poll.

Each iteration yields the CPU (``sched_yield``), so a thread or process runnable on the same CPU
goes first. Nothing polls while a request is in flight: a batch computing in the inference
thread is waited for asleep. The CPU spent is at most the window each time sequential requests
stop coming close together, and is counted (:attr:`IdlePoll.seconds`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time

_yield = getattr(os, "sched_yield", lambda: None)


class IdlePoll:
    """Counts the requests in flight of one event loop and polls after the last one."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.active = 0
        self.polling = False
        self.polled = 0
        """Idle times polled through so far."""
        self.seconds = 0.0
        """Time spent polling so far (finished polls): the CPU this costs at most."""
        self._started = 0.0
        self._overlapped = False
        """Whether two requests were in flight at once since the process was last idle."""
        self._idle_since = 0.0
        self._last_gap = math.inf
        """Idle time before the latest request that found the process idle."""
        self._until = 0.0
        self._fresh = False
        """An end scheduled the poll and no poll iteration has run since (a request beginning
        now was ready in the same loop iteration)."""
        self._source: object = None
        """The connection of the latest request."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self, source: object = None) -> None:
        """A request arrived on ``source`` (its connection, or the client's address)."""
        if self.active or self._fresh or source != self._source:
            self._overlapped = True
            self._until = 0.0  # a poll under way stops at its next iteration
            self._source = source
        else:
            self._last_gap = time.perf_counter() - self._idle_since
        self.active += 1

    def end(self) -> None:
        """A request was answered (or abandoned)."""
        self.active -= 1
        if self.active:
            return
        now = self._idle_since = time.perf_counter()
        overlapped, self._overlapped = self._overlapped, False
        if overlapped or self.window_s <= 0 or self._last_gap > self.window_s:
            return
        self._until = now + self.window_s
        self._fresh = True
        if not self.polling:
            self.polling = True
            self.polled += 1
            self._started = now
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._poll)

    def _poll(self) -> None:
        self._fresh = False
        now = time.perf_counter()
        if not self.active and now < self._until:
            assert self._loop is not None
            _yield()
            self._loop.call_soon(self._poll)
        else:
            self.polling = False
            self.seconds += now - self._started
