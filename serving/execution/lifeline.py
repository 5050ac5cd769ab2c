"""What every child process of the server does first: outlive no parent, leave signals to it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1


def bind_to_parent(parent: int) -> None:
    """Ignore Ctrl-C and a group-wide SIGTERM (they reach every process; the parent decides
    when its children stop, and a child whose parent is gone sees EOF on its pipe), and have
    the kernel kill this process when the parent dies (Linux), even while it is busy and so
    not reading the pipe whose EOF would tell it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal_on_parent_death(parent, signal.SIGKILL)


def signal_on_parent_death(parent: int, sent: signal.Signals) -> None:
    """Have the kernel send ``sent`` to this process when ``parent`` dies (Linux); exit at
    once if it is gone already."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sent)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(0)
