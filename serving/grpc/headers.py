"""Request header blocks to what a call needs of them (:class:`Head`), remembered: a gRPC client
sends the same block for call after call (every field indexed once the first call filled the
HPACK table), so decoding and reading it each time (about a seventh of a single-row call's CPU)
is done once per table state.

Decoding itself is the ``hpack`` package's. A block's result depends only on the dynamic table,
and the table changes only through blocks that hold a literal with incremental indexing or a
table size update (RFC 7541, 6.2.1 and 6.3); each such block starts a new generation, and a
remembered result is used only in the generation it was decoded in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from hpack import Decoder

from serving.grpc.calls import GrpcError, Status

COMPRESSED = "compressed messages are not accepted (send grpc-encoding identity)"
_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_PROTOCOL = {b"content-type", b"te", b"user-agent"}


class Head(NamedTuple):
    """What a call's request headers say."""

    path: str
    metadata: dict[str, str]
    """Custom metadata (read only: calls sent with the same block share it)."""
    timeout_s: float | None
    grpc: bool
    """A gRPC request at all (POST, ``application/grpc...``)? If not, it gets HTTP 415."""
    problem: GrpcError | None
    """Why the call is refused before it runs (a malformed deadline, compression)."""


def head_of(fields: Iterable[tuple[bytes, bytes]]) -> Head:
    special: dict[bytes, bytes] = {}
    metadata: dict[str, str] = {}
    for name, value in fields:
        if name[:1] == b":" or name in _PROTOCOL or name.startswith(b"grpc-"):
            special[name] = value
        else:
            metadata[name.decode("latin-1")] = value.decode("latin-1")
    grpc = special.get(b":method") == b"POST"
    grpc = grpc and special.get(b"content-type", b"").startswith(b"application/grpc")
    path = special.get(b":path", b"").decode("latin-1")
    timeout_s, problem = None, None
    try:
        timeout_s = timeout_of(special.get(b"grpc-timeout"))
        if special.get(b"grpc-encoding", b"identity") != b"identity":
            raise GrpcError(Status.UNIMPLEMENTED, COMPRESSED)
    except GrpcError as exc:
        problem = exc
    return Head(path, metadata, timeout_s, grpc, problem)


def timeout_of(value: bytes | None) -> float | None:
    """Seconds of a ``grpc-timeout`` value (None: none)."""
    if value is None:
        return None
    if (match := _TIMEOUT.match(value)) is None:
        raise GrpcError(Status.INVALID_ARGUMENT, f"malformed grpc-timeout {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


KEPT = 64
"""Blocks remembered per connection (deadlines make blocks differ: those are not remembered
beyond this)."""


class HeaderDecoder:
    def __init__(self, max_header_list_size: int) -> None:
        self.decoder = Decoder(max_header_list_size=max_header_list_size)
        self.generation = 0
        self.known: dict[bytes, tuple[int, Head]] = {}

    def decode(self, block: bytes) -> Head:
        """What ``block`` says; HPACKError when it is malformed."""
        known = self.known.get(block)
        if known is not None and known[0] == self.generation:
            return known[1]
        head = head_of((bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True))
        if changes_table(block):
            self.generation += 1
        else:
            if len(self.known) >= KEPT:
                self.known.clear()
            self.known[block] = (self.generation, head)
        return head


def changes_table(block: bytes) -> bool:
    """Whether decoding ``block`` (well formed) adds to or resizes the dynamic table."""
    at, end = 0, len(block)
    while at < end:
        first = block[at]
        if first & 0x80:  # indexed field
            at = _skip_integer(block, at, 7)
        elif first & 0xC0 == 0x40 or first & 0xE0 == 0x20:  # incremental indexing; size update
            return True
        else:  # literal without or never indexing
            name_index = first & 0x0F
            at = _skip_integer(block, at, 4)
            if name_index == 0:
                at = _skip_string(block, at)
            at = _skip_string(block, at)
    return False


def _skip_integer(block: bytes, at: int, prefix_bits: int) -> int:
    if block[at] & ((1 << prefix_bits) - 1) != (1 << prefix_bits) - 1:
        return at + 1
    at += 1
    while block[at] & 0x80:
        at += 1
    return at + 1


def _read_integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    top = (1 << prefix_bits) - 1
    value = block[at] & top
    at += 1
    if value < top:
        return value, at
    shift = 0
    while True:
        byte = block[at]
        value += (byte & 0x7F) << shift
        shift += 7
        at += 1
        if not byte & 0x80:
            return value, at


def _skip_string(block: bytes, at: int) -> int:
    length, at = _read_integer(block, at, 7)
    return at + length
