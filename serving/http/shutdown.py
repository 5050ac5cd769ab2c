"""Exit 0 after a graceful shutdown on SIGTERM or Ctrl-C.

uvicorn handles both signals itself: it stops accepting, lets requests in flight finish for
a grace period, runs the app's shutdown (which stops the inference pool), then restores the
handlers that were installed before it started and raises the signal again, so that the
default action (for SIGTERM: death by the signal, exit status 143) follows a clean
shutdown. A service manager reads that as a failure. The handlers installed here only note
the signal, so the process returns from ``main`` and exits 0 once everything is stopped.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def exit_cleanly_on_signals() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM re-raised after uvicorn's shutdown are only
    recorded (in the yielded list); the previous handlers come back afterwards."""
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in HANDLED}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
