"""What the service knows about the request being answered: its id, and once known the model
version and rows it asked for. Held in a context variable, so log lines and metrics made
anywhere while answering it can name it. No web framework here."""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar

MAX_REQUEST_ID = 128
"""Longest ``X-Request-ID`` accepted from a client."""
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
REQUEST_ID_RULE = f"1 to {MAX_REQUEST_ID} characters among letters, digits and . _ : / + = @ -"


class RequestInfo:
    """One request; filled in as it is answered."""

    __slots__ = ("model", "request_id", "rows", "version")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model = ""
        self.version = ""
        self.rows = 0


CURRENT: ContextVar[RequestInfo | None] = ContextVar("servewell_request", default=None)


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
