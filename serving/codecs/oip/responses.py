"""Responses of the Open Inference Protocol: outputs in JSON, or in binary for those asked for
in binary (``binary_data`` per output, ``binary_data_output`` for all).

Numeric outputs go into binary straight from their arrays, and into JSON through orjson's own
numpy support."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from serving.codecs.oip.datatypes import BOOL, BYTES, LENGTH, NUMERIC_DTYPES, OutputTensor


def frame_texts(values: Iterable[str]) -> dict[str, bytes]:
    """Each distinct text as a BYTES element: its 4-byte little-endian length, then its UTF-8."""
    framed = {}
    for value in values:
        raw = value.encode("utf-8")
        framed[value] = LENGTH.pack(len(raw)) + raw
    return framed


def _bytes_blob(values: list[str], frames: Mapping[str, bytes] | None) -> bytes:
    """BYTES elements framed with their 4-byte lengths. Labels repeat a few values, so each
    element is one C-level dict lookup of its framed bytes and the blob one join: with the
    frames known in advance (a classifier's classes), that is one hash per element."""
    if frames is not None:
        try:
            return b"".join(map(frames.__getitem__, values))
        except KeyError:  # a value not known in advance: frame every distinct value below
            pass
    return b"".join(map(frame_texts(set(values)).__getitem__, values))


def _contiguous(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Values as a flat C-contiguous array of ``dtype`` (no copy when they already are)."""
    return np.ascontiguousarray(values.astype(dtype, copy=False)).reshape(-1)


def binary_data(tensor: OutputTensor) -> bytes | memoryview:
    """The tensor's binary data. Numeric tensors give a view of their own memory (the
    response is joined once, so copying them here would copy them twice)."""
    if tensor.datatype == BYTES:
        return _bytes_blob(tensor.values.reshape(-1).tolist(), tensor.frames)
    dtype = np.dtype(np.uint8) if tensor.datatype == BOOL else NUMERIC_DTYPES[tensor.datatype]
    return _contiguous(tensor.values, dtype).data.cast("B")


_JSON_NUMPY = frozenset(
    np.dtype(t) for t in ("f8", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")
)
"""Native dtypes whose arrays orjson writes itself, exactly as it writes the same values as
Python numbers (float32 and float16 excluded: orjson would print their shortest float32
form, not the float64 value ``tolist`` gives)."""


def _json_data(values: npt.NDArray[Any]) -> Any:
    """A tensor's ``data`` for JSON: the numpy array itself where orjson can serialise it
    (no Python object per element), else a flat list."""
    dtype = values.dtype
    if dtype.kind != "O" and dtype in _JSON_NUMPY:  # text labels (the common case) are "O"
        return np.ascontiguousarray(values).reshape(-1)
    return values.reshape(-1).tolist()


def encode_response(
    model: str, version: int, request_id: str | None, outputs: Sequence[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary data follows it."""
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        document["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,  # a tuple: orjson writes it as the array it is
        }
        if tensor.binary:
            blob = binary_data(tensor)
            blobs.append(blob)
            entry["parameters"] = {"binary_data_size": len(blob)}
        else:
            entry["data"] = _json_data(tensor.values)
        entries.append(entry)
    document["outputs"] = entries
    head = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
