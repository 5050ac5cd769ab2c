"""CSV lines built with numpy: a chunk of output as one byte buffer, without a Python call per
row or per value.

Formatting a million rows in Python (``b"%d," % row``, joining labels, ``repr`` of floats) cost
more than reading, checking and predicting them together; ``DataFrame.to_csv`` more still. Each
line here is a sequence of segments (a row number, a label from a small table, a block of fixed
width text, ...); their byte lengths per row give every segment's offset in the buffer, and each
segment writes its bytes at those offsets with a few vectorised scatters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Bytes = npt.NDArray[np.uint8]
Ints = npt.NDArray[np.int64]
_ZERO = ord("0")


class Segment(Protocol):
    def lengths(self) -> Ints: ...

    def fill(self, buffer: Bytes, offsets: Ints) -> None: ...


@dataclass(frozen=True)
class Integers:
    """Non-negative integers in decimal, in increasing order (row numbers): the rows with the
    same number of digits then form one slice each, written without masks."""

    values: Ints

    def _digits(self) -> Ints:
        digits = np.ones(len(self.values), dtype=np.int64)
        bound = 10
        while bound <= (self.values.max() if len(self.values) else 0):
            digits += self.values >= bound
            bound *= 10
        return digits

    def lengths(self) -> Ints:
        return self._digits()

    def fill(self, buffer: Bytes, offsets: Ints) -> None:
        digits = self._digits()
        bounds = np.flatnonzero(np.diff(digits)) + 1
        for part in np.split(np.arange(len(digits)), bounds):
            if not len(part):
                continue
            sl = slice(int(part[0]), int(part[-1]) + 1)
            width = int(digits[sl.start])
            rest = self.values[sl].copy()
            ends = offsets[sl] + width - 1
            for place in range(width):
                buffer[ends - place] = rest % 10 + _ZERO
                rest //= 10


@dataclass(frozen=True)
class Constant:
    """The same bytes on every row."""

    text: bytes
    n: int

    def lengths(self) -> Ints:
        return np.full(self.n, len(self.text), dtype=np.int64)

    def fill(self, buffer: Bytes, offsets: Ints) -> None:
        for j, byte in enumerate(self.text):
            buffer[offsets + j] = byte


@dataclass(frozen=True)
class Table:
    """Per row, one entry of a small table of byte strings (e.g. class labels)."""

    codes: Ints
    table: Sequence[bytes]

    def lengths(self) -> Ints:
        sizes = np.array([len(t) for t in self.table], dtype=np.int64)
        return sizes[self.codes]

    def fill(self, buffer: Bytes, offsets: Ints) -> None:
        for code, text in enumerate(self.table):
            if not text:
                continue
            where = offsets[self.codes == code]
            for j, byte in enumerate(text):
                buffer[where + j] = byte


@dataclass(frozen=True)
class Block:
    """Rows of fixed-width text (``text[i]`` for row ``i``) where ``present``; nothing else."""

    text: Bytes
    present: npt.NDArray[np.bool_]

    def lengths(self) -> Ints:
        return np.where(self.present, self.text.shape[1], 0).astype(np.int64)

    def fill(self, buffer: Bytes, offsets: Ints) -> None:
        where = offsets[self.present]
        rows = self.text[self.present]
        for j in range(self.text.shape[1]):
            buffer[where + j] = rows[:, j]


@dataclass(frozen=True)
class Ragged:
    """Per row, its own byte string (the general case, e.g. formatted floats)."""

    items: Sequence[bytes]

    def lengths(self) -> Ints:
        return np.fromiter(map(len, self.items), dtype=np.int64, count=len(self.items))

    def fill(self, buffer: Bytes, offsets: Ints) -> None:
        lengths = self.lengths()
        joined = np.frombuffer(b"".join(self.items), dtype=np.uint8)
        if not len(joined):
            return
        starts = np.cumsum(lengths) - lengths
        buffer[np.repeat(offsets - starts, lengths) + np.arange(len(joined))] = joined


def assemble(n: int, segments: Sequence[Segment]) -> bytes:
    """The ``n`` rows' segments, concatenated per row, rows one after the other."""
    if n == 0:
        return b""
    sizes = [s.lengths() for s in segments]
    total = np.sum(sizes, axis=0)
    offsets = np.cumsum(total) - total
    buffer = np.empty(int(total.sum()), dtype=np.uint8)
    for segment, size in zip(segments, sizes, strict=True):
        segment.fill(buffer, offsets)
        offsets = offsets + size
    return buffer.tobytes()


def fixed_decimals(values: npt.NDArray[np.float64], decimals: int) -> Bytes:
    """``,d.ddd…`` per value, a row per row of ``values`` (n, m): m fields of width
    ``decimals + 3``, each with its leading comma. Values must lie in [0, 9.999…]
    (probabilities); they are rounded to ``decimals`` places."""
    n, m = values.shape
    scale = 10**decimals
    width = decimals + 3
    # uint64 keeps 10 * 10**decimals exact for any sensible number of decimals.
    scaled = np.rint(np.clip(values, 0.0, 9.0) * scale).astype(np.uint64)
    text = np.empty((n, m, width), dtype=np.uint8)
    text[:, :, 0] = ord(",")
    text[:, :, 1] = scaled // np.uint64(scale) + _ZERO
    text[:, :, 2] = ord(".")
    rest = scaled % np.uint64(scale)
    for d in range(decimals - 1, -1, -1):  # last digit first
        rest, digit = np.divmod(rest, np.uint64(10))
        text[:, :, 3 + d] = digit + _ZERO
    return text.reshape(n, m * width)
