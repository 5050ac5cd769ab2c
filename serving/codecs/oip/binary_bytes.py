"""BYTES tensors in Triton's binary tensor data extension: each element a 4-byte little-endian
length followed by that many bytes of UTF-8.

Split by a regular expression when their elements have a few distinct lengths (categories),
else by walking their framing."""

from __future__ import annotations

import re

from serving.codecs.oip.datatypes import LENGTH
from serving.core.errors import InvalidInputError, MalformedRequestError

_FEW_ELEMENTS = 256
"""Smaller BYTES tensors are walked element by element: as fast, and nothing to compile."""
_MAXLENGTHS = 16
"""BYTES tensors whose elements have more distinct lengths than this are walked."""
_MAX_SPLITLENGTH = 1 << 16
"""BYTES tensors with a longer element are walked (long texts are few per byte anyway)."""
_LEARN = 64
"""Elements walked in Python to learn lengths before each run at C speed."""
_MAX_ROUNDS = 2
"""Rounds of learning and running before the tensor is walked instead."""


def bytes_elements(chunk: memoryview, count: int, where: str) -> list[str]:
    """The elements of a binary BYTES tensor, as text."""
    if count >= _FEW_ELEMENTS:
        split = split_texts(chunk, count)
        if split is not None:
            return split
    return _walk_bytes_elements(chunk, count, where)


def split_texts(chunk: memoryview, count: int) -> list[str] | None:
    """The elements of a BYTES tensor whose elements have few distinct lengths (categories,
    identifiers), or None when it is anything else (more lengths, a long element, bad
    framing, not UTF-8, another count).

    Walking 10 000 length-prefixed elements in Python costs several milliseconds. Instead, a
    regular expression splits the tensor at C speed: one alternative per distinct length,
    its 4-byte prefix then that many bytes of anything. Splitting this way is exact: at each
    boundary the prefix selects one alternative. The lengths are learned by walking a few
    elements, then a starred pattern skips the run of elements of known lengths that
    follows, for at most two rounds. The pattern depends on the lengths only, not on the
    values, so its size and the number of compilations per request are bounded by
    constants (and a client's values cannot make the compilation cost grow with their
    size). Whatever is not certain returns None, and the caller walks the elements (which
    also says what is wrong)."""
    end = len(chunk)
    prefixes: set[bytes] = set()
    position = 0
    for _ in range(_MAX_ROUNDS):
        for _ in range(_LEARN):
            if position == end:
                break
            if position + 4 > end:
                return None
            (length,) = LENGTH.unpack_from(chunk, position)
            if length > _MAX_SPLITLENGTH:
                return None
            prefixes.add(bytes(chunk[position : position + 4]))
            position += 4 + length
            if position > end:
                return None
        if len(prefixes) > _MAXLENGTHS:
            return None
        if position < end:
            run = _length_pattern(frozenset(prefixes), b"*").match(chunk, position)
            assert run is not None  # a starred pattern matches, if only the empty string
            position = run.end()
        if position == end:
            break
    else:
        return None
    # The walk and the runs went from boundary to boundary to the end: findall from the
    # start meets the same boundaries.
    elements = _length_pattern(frozenset(prefixes), b"").findall(chunk) if prefixes else []
    if len(elements) != count:
        return None
    texts: dict[bytes, str] = {}
    try:
        for element in set(elements):
            texts[element] = element[4:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return list(map(texts.__getitem__, elements))


def _length_pattern(prefixes: frozenset[bytes], repeat: bytes) -> re.Pattern[bytes]:
    """Any framed element with one of these length prefixes (``repeat``: ``*`` for a run).
    Sorted, so that one set of lengths gives one pattern (re caches compiled patterns)."""
    alternatives = b"|".join(
        re.escape(prefix) + b".{%d}" % LENGTH.unpack(prefix)[0] for prefix in sorted(prefixes)
    )
    return re.compile(b"(?s)(?:" + alternatives + b")" + repeat)


def _walk_bytes_elements(chunk: memoryview, count: int, where: str) -> list[str]:
    out: list[str] = []
    position = 0
    end = len(chunk)
    for i in range(count):
        if position + 4 > end:
            raise MalformedRequestError(
                f"{where}: BYTES element {i} has no complete 4-byte length prefix"
            )
        (length,) = LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise MalformedRequestError(
                f"{where}: BYTES element {i} of {length} bytes runs past its data"
            )
        try:
            out.append(str(chunk[position : position + length], "utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"{where}: BYTES element {i} is not UTF-8 text") from None
        position += length
    if position != end:
        raise MalformedRequestError(
            f"{where}: {end - position} bytes left over after {count} BYTES elements"
        )
    return out
