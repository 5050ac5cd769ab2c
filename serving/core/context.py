"""What the service knows about the request being answered: its id, its deadline and its
admission ticket, and once known the model version and rows it asked for.

The transport builds one :class:`RequestContext` per request and passes it down as an
argument (decode, admission, prediction). The context variable :data:`CURRENT` holds the
same object only so that log lines made anywhere while answering it can name the request.
No web framework here."""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from serving.core.shedding import Ticket

MAX_REQUEST_ID = 128
"""Longest ``X-Request-ID`` accepted from a client."""
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
REQUEST_ID_RULE = f"1 to {MAX_REQUEST_ID} characters among letters, digits and . _ : / + = @ -"


class Deadline(NamedTuple):
    at: float
    """Event-loop time (``loop.time()``) by which the answer must be ready."""
    seconds: float
    """The timeout it was made from (for the error message)."""


class RequestContext:
    """One request; the model fields are filled in as it is answered (for its access line
    and metrics)."""

    __slots__ = ("deadline", "model", "request_id", "rows", "started", "ticket", "version")

    def __init__(
        self,
        request_id: str,
        deadline: Deadline | None = None,
        ticket: Ticket | None = None,
        started: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.started = started
        """When the transport began answering it (``time.perf_counter()``), for latencies."""
        self.deadline = deadline
        """None: the service's default timeout, counted from when prediction starts."""
        self.ticket = ticket
        """The request's admission at the edge (:class:`serving.core.shedding.Ticket`), told
        the request's row count once admitted, so that the edge learns to shed before parsing."""
        self.model = ""
        self.version = ""
        self.rows = 0


RequestInfo = RequestContext
"""The former name, kept for callers that only log."""

CURRENT: ContextVar[RequestContext | None] = ContextVar("servewell_request", default=None)
"""For log correlation only: nothing reads the request's deadline or ticket from here."""


def current_request_id() -> str | None:
    info = CURRENT.get()
    return None if info is None else info.request_id


def valid_request_id(value: bytes) -> bool:
    return _SAFE_ID.fullmatch(value) is not None


# Generated ids: a random per-process prefix and a counter (unique without a syscall each).
_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_PREFIX}-{next(_COUNTER):x}"


def _reseed() -> None:
    global _PREFIX
    _PREFIX = os.urandom(6).hex()


# A forked process must not repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)
