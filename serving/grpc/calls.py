"""A gRPC call as the service's methods see it, whatever carries it: the status codes, the error
that ends a call with one, the call's metadata and deadline, and the two kinds of handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum


class Status(IntEnum):
    """gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcError(Exception):
    """Ends a call with ``code`` and ``message`` (raised by handlers)."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Call:
    """One call as its handler sees it."""

    method: str
    metadata: dict[str, str]
    """Custom metadata, lower-case keys (``-bin`` values as sent, base64)."""
    timeout_s: float | None
    """From ``grpc-timeout``; None: the client set no deadline."""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    """Sent with the status, whatever it is."""


Unary = Callable[[Call, bytes], Awaitable[bytes]]
Streaming = Callable[[Call, AsyncIterator[bytes]], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class Method:
    unary: Unary | None = None
    streaming: Streaming | None = None
