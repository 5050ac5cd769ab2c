"""Datatypes and tensors of the Open Inference Protocol, as requests carry them in and
responses carry them out (decoding: :mod:`serving.codecs.oip.tensors`; encoding:
:mod:`serving.codecs.oip.responses`)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Wire dtype of every fixed-size numeric datatype (binary data is little-endian)."""
BOOL = "BOOL"
BYTES = "BYTES"
DATATYPES = frozenset({*NUMERIC_DTYPES, BOOL, BYTES})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset(NUMERIC_DTYPES) - FLOAT_TYPES

HEADER_LENGTH = "inference-header-content-length"
"""Length of the JSON part of a body that carries binary tensor data (header, lower case)."""

LENGTH = struct.Struct("<I")
"""The 4-byte little-endian length that frames each BYTES element in binary data."""


@dataclass(slots=True)
class Tensor:
    """One input tensor of a request, decoded."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: npt.NDArray[Any] | list[str]
    """Flat, row-major: a numpy array (bool, integer or float), or text for BYTES."""
    index: int
    """Its position in the request's inputs."""

    @property
    def where(self) -> str:
        """Where it is in the request, for messages (``inputs[0] 'x'``)."""
        return f"inputs[{self.index}] {self.name!r}"


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None
    """``parameters.binary_data`` of the output; None when not given."""


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    """None: every output of the model."""
    binary_output: bool
    """``parameters.binary_data_output``: outputs not asked for explicitly come in binary."""


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: npt.NDArray[Any]
    """Row-major values: numbers, bools, or str (BYTES)."""
    binary: bool
    frames: Mapping[str, bytes] | None = None
    """BYTES only: the framed bytes (see :func:`frame_texts`) of the values known in advance,
    e.g. a classifier's classes; values not in it are framed when encoding."""


def numbers_problem(array: npt.NDArray[Any], kind: str, datatype: str) -> str | None:
    """Why the decoded JSON ``array`` cannot be the data of a numeric ``datatype``, or None.
    ``kind`` is its dtype's kind, given apart because an empty list decodes as floats."""
    if kind not in "iuf" or (kind == "f" and datatype in INT_TYPES):
        wanted = "integers" if datatype in INT_TYPES else "numbers"
        return f"{datatype} data must be JSON {wanted}"
    if datatype in INT_TYPES and array.size:
        info = np.iinfo(NUMERIC_DTYPES[datatype])
        if array.min() < info.min or array.max() > info.max:
            return f"a value is out of the range of {datatype}"
    return None
