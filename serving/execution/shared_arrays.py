"""Large arrays between the server and a pool worker through shared memory, not the socket.

Pickled through the worker's socketpair, a 10 000 x 30 float64 batch (2.4 MB) crosses in
pieces of the socket buffer's size, each sent when the worker has read the last: the event
loop, which writes it, is blocked for about 6 ms, and serves no other request meanwhile
(measured on the 2-core box: 6.8 ms round trip, against 0.24 ms through shared memory). So
arrays of at least :data:`MIN_SHARED_BYTES` are copied into a memory region both processes
map, and the message carries only where they are (:class:`SharedArray`).

Each direction has its own region, written by one side (:class:`Outbox`) and read by the other
(:class:`Inbox`). A region is an anonymous ``memfd``: made when first needed, replaced by a
bigger one when arrays do not fit, its file descriptor passed to the peer over the socket
(``SCM_RIGHTS``) just before the message that first uses it. It has no name, so nothing is
left behind when either process is killed: the kernel frees it with its last mapping. A
region keeps the size of the largest message sent through it, which the request size limits
bound (``max_request_rows`` x features x 8 bytes, rounded up to a power of two).

Reusing a region is safe because of the pool's protocol: the server sends a worker a batch only
when the worker is idle, and the worker answers each batch once; the reader of a region is
done with its contents (copied out, or predicted from) before the writer writes again. An
explained batch, answered later by the worker's explaining thread, has its rows copied out as
it is read, and its answer is pickled.

Where ``os.memfd_create`` does not exist (not Linux), every array is pickled as before.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("servewell.pool")

MIN_SHARED_BYTES = 64 * 1024
"""Smaller messages are pickled: as fast for them, and nothing to set up."""
REGION = "region"
"""Tag of the message that announces a new region; its file descriptor follows it."""
_ALIGN = 64
_MIN_REGION_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SharedArray:
    """Where the sender put an array in its region."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


def supported() -> bool:
    return hasattr(os, "memfd_create")


def _shareable(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size > 0


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class Outbox:
    """The region this process writes the arrays it sends to one peer into."""

    def __init__(
        self, conn: Connection, min_bytes: int = MIN_SHARED_BYTES, enabled: bool | None = None
    ) -> None:
        self._conn = conn
        self._min_bytes = min_bytes
        self._enabled = supported() if enabled is None else enabled
        self._map: mmap.mmap | None = None
        self.capacity = 0
        self.regions = 0
        """Regions made so far (for tests)."""

    def pack(self, *values: Any) -> tuple[Any, ...]:
        """``values`` as they should travel: numeric arrays as :class:`SharedArray` (copied
        into the region) when together they are large, everything else as it is. When a new
        region is needed, it is sent to the peer first (this writes to the connection)."""
        if not self._enabled:
            return values
        sizes = [_aligned(v.nbytes) if _shareable(v) else 0 for v in values]
        needed = sum(sizes)
        if needed < self._min_bytes:
            return values
        region = self._region(needed)
        if region is None:
            return values
        out: list[Any] = []
        offset = 0
        for value, size in zip(values, sizes, strict=True):
            if not size:
                out.append(value)
                continue
            array = np.ascontiguousarray(value)
            target = np.ndarray(array.shape, array.dtype, buffer=region, offset=offset)
            target[...] = array
            out.append(SharedArray(offset, array.dtype.str, array.shape))
            offset += size
        return tuple(out)

    def _region(self, needed: int) -> mmap.mmap | None:
        """A region of at least ``needed`` bytes, known to the peer; None when no memory
        could be had for it (the arrays are then pickled)."""
        if self._map is not None and needed <= self.capacity:
            return self._map
        capacity = max(_MIN_REGION_BYTES, 1 << (needed - 1).bit_length())
        try:
            fd = os.memfd_create("servewell-arrays", os.MFD_CLOEXEC)
        except OSError as exc:  # e.g. out of file descriptors
            log.warning("no shared memory for a %d-byte message (%s); pickling it", needed, exc)
            return None
        try:
            try:
                # Allocated now: a page the kernel cannot give later would be a SIGBUS on
                # write, while here it is an error to handle.
                os.posix_fallocate(fd, 0, capacity)
                region = mmap.mmap(fd, capacity)
            except OSError as exc:
                log.warning("no shared memory for a %d-byte message (%s); pickling it", needed, exc)
                return None
            # Errors from here on are the connection's: the caller's to handle.
            self._conn.send((REGION, capacity))
            send_handle(self._conn, fd, 0)  # the pid is only used on Windows
        finally:
            os.close(fd)  # the mapping and the peer's copy keep the memory
        # The old region is dropped, not closed: an array may still view it, and the mapping
        # goes when the last one does.
        self._map = region
        self.capacity = capacity
        self.regions += 1
        return region

    def release(self) -> None:
        """Drop the region (the peer is gone or being stopped); see :meth:`Inbox.release`."""
        self._map, self.capacity = None, 0


class Inbox:
    """The peer's region, as this process maps it."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def attach(self, conn: Connection, size: int) -> None:
        """Map the region announced by a :data:`REGION` message (its descriptor follows).

        Raises OSError when that fails, as for a broken connection: the peer's later
        messages would use a region this side does not have, so the peer must be given up."""
        try:
            fd = recv_handle(conn)
        except RuntimeError as exc:  # no descriptor came (e.g. this process had none left)
            raise OSError(f"the shared region's descriptor did not arrive: {exc}") from exc
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Drop the peer's region (the peer is gone or being stopped). It is unmapped now,
        or with the last array that views it; never closed outright, which would leave such
        an array on unmapped memory (NumPy keeps the mmap object, not a buffer export, so
        ``mmap.close`` does not refuse). Dropped here rather than with its owner, because a
        pool's objects sit in reference cycles that the garbage collector may keep for long."""
        self._map = None

    def unpack(self, value: Any, *, copy: bool) -> Any:
        """A value as sent: an array it stands for when it is a :class:`SharedArray` (a view
        of the region, valid until the peer writes again, unless ``copy``), else itself."""
        if not isinstance(value, SharedArray):
            return value
        if self._map is None:
            raise RuntimeError("an array arrived in shared memory before its region")
        view: npt.NDArray[Any] = np.ndarray(
            value.shape, np.dtype(value.dtype), buffer=self._map, offset=value.offset
        )
        return view.copy() if copy else view
