"""Tensors of the Open Inference Protocol: datatypes, inference requests in, responses out.

A request body is JSON, or, with Triton's binary tensor data extension, JSON followed by raw
tensor bytes: the ``Inference-Header-Content-Length`` header gives the length of the JSON
part, and each input that travels in binary says how many bytes it takes with
``parameters.binary_data_size`` (inputs' bytes follow one another in input order). Binary
elements are little-endian and row-major; BOOL is one byte per element; BYTES elements are
each a 4-byte little-endian length followed by that many bytes. Responses work the same way
for outputs asked for in binary (``binary_data`` per output, ``binary_data_output`` for all).

Binary inputs are decoded with ``numpy.frombuffer`` (no copy, no per-element Python), BYTES
by a regular expression when their elements have a few distinct lengths (categories), else
by walking their framing. Responses put numeric outputs in binary straight from their
arrays, and in JSON through orjson's own numpy support. Every problem is an
``InvalidInputError`` (or its ``MalformedRequestError`` for framing and JSON syntax) whose
message says where.

This module decodes requests; the datatypes and tensor classes are in ``datatypes.py``, binary
BYTES elements in ``binary_bytes.py``, responses in ``responses.py``. Their public names are
importable from here too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from serving.codecs.oip.binary_bytes import bytes_elements
from serving.codecs.oip.datatypes import (
    BOOL,
    BYTES,
    DATATYPES,
    FLOAT_TYPES,
    HEADER_LENGTH,
    INT_TYPES,
    NUMERIC_DTYPES,
    InferRequest,
    OutputTensor,
    RequestedOutput,
    Tensor,
    numbers_problem,
)
from serving.codecs.oip.responses import encode_response, frame_texts
from serving.core.errors import InvalidInputError, MalformedRequestError

__all__ = [
    "BOOL",
    "BYTES",
    "DATATYPES",
    "FLOAT_TYPES",
    "HEADER_LENGTH",
    "INT_TYPES",
    "NUMERIC_DTYPES",
    "InferRequest",
    "OutputTensor",
    "RequestedOutput",
    "Tensor",
    "decode_json",
    "encode_response",
    "frame_texts",
    "from_binary",
    "numbers_problem",
    "parse_document",
    "parse_request",
    "split_body",
]

_MAX_ELEMENTS = 1 << 31
# Some clients repeat the model's name and version in the body (Triton's own examples do).
_REQUEST_FIELDS = frozenset(
    {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
)
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message)


def _malformed(message: str) -> MalformedRequestError:
    return MalformedRequestError(message)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits only: str.isdigit also takes "²" and other digits int() refuses.
    text = header_length.strip(" \t")
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise _malformed(
            "the Inference-Header-Content-Length header must be a byte count (ASCII digits), "
            f"not {_shown(text)}"
        )
    length = int(text)
    if length > len(body):
        raise _malformed(
            f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}.parameters must be an object")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(f"{where}.parameters.{key} must be true or false")
    return value


def parse_request(
    body: bytes, header_length: str | None, max_elements: int = _MAX_ELEMENTS
) -> InferRequest:
    """Decode an inference request body (JSON, with or without binary tensor data)."""
    head, binary = split_body(body, header_length)
    return parse_document(decode_json(head), binary, header_length, max_elements)


def decode_json(head: bytes) -> Any:
    """The JSON part of a request body, decoded."""
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _malformed(f"the inference request is not valid JSON: {exc}") from None


def parse_document(
    document: Any, binary: memoryview, header_length: str | None, max_elements: int = _MAX_ELEMENTS
) -> InferRequest:
    """An inference request from its decoded JSON part and its binary part. ``max_elements``:
    the most elements its tensors may hold together, checked from their shapes before any
    is decoded (decoding is event-loop work that grows with the elements, and a body of
    empty BYTES elements holds millions)."""
    if not isinstance(document, dict):
        raise _bad("the inference request must be a JSON object")
    unknown = document.keys() - _REQUEST_FIELDS
    if unknown:
        raise _bad(f"unknown field(s) in the inference request: {', '.join(sorted(unknown))}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    if "classification" in parameters:
        raise _bad("the classification extension is not supported; ask for predict_proba")
    binary_output = _flag(parameters, "binary_data_output", "request") or False

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("inputs must be a non-empty list of tensors")
    inputs: list[Tensor] = []
    offset = 0
    budget = max_elements
    for i, raw in enumerate(raw_inputs):
        tensor, size = _input(raw, i, binary, offset, budget)
        inputs.append(tensor)
        offset += size
        budget -= math.prod(tensor.shape)
    if offset != len(binary):
        if header_length is None:
            raise _bad("binary_data_size is given but there is no Inference-Header-Content-Length")
        raise _malformed(
            f"the body carries {len(binary)} bytes of binary tensor data after the JSON "
            f"header but the inputs' binary_data_size add up to {offset}"
        )
    return InferRequest(request_id, inputs, _outputs(document.get("outputs")), binary_output)


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("outputs must be a list")
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"outputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"{where} must be an object with a name")
        unknown = item.keys() - _OUTPUT_FIELDS
        if unknown:
            raise _bad(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        name = item["name"]
        if name in seen:
            raise _bad(f"{where}: output {name!r} is asked for twice")
        seen.add(name)
        parameters = _parameters(item.get("parameters"), where)
        if parameters.get("classification"):
            raise _bad(f"{where}: the classification extension is not supported")
        out.append(RequestedOutput(name, _flag(parameters, "binary_data", where)))
    return out


def _input(raw: Any, i: int, binary: memoryview, offset: int, budget: int) -> tuple[Tensor, int]:
    """One input tensor, and how many bytes of the binary part it used; ``budget``: the most
    elements it may have."""
    where = f"inputs[{i}]"
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise _bad(f"{where}.name must be a string")
    where = f"{where} {name!r}"
    unknown = raw.keys() - _INPUT_FIELDS
    if unknown:
        raise _bad(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise _bad(
            f"{where}: datatype {_shown(datatype)} is not one of {', '.join(sorted(DATATYPES))}"
        )
    shape_raw = raw.get("shape")
    if (
        not isinstance(shape_raw, list)
        or not shape_raw
        or not all(type(d) is int and d >= 0 for d in shape_raw)
    ):
        raise _bad(f"{where}: shape must be a non-empty list of non-negative integers")
    shape = tuple(shape_raw)
    count = math.prod(shape)
    if count > _MAX_ELEMENTS:
        raise _bad(f"{where}: shape {list(shape)} has too many elements")
    if count > budget:
        raise _bad(
            f"{where}: shape {list(shape)} makes the inputs hold far more elements than this "
            "model takes in one request (its features times the most rows per request)"
        )
    parameters = _parameters(raw.get("parameters"), where)
    size = parameters.get("binary_data_size")
    has_data = "data" in raw
    if size is None:
        if not has_data:
            raise _bad(f"{where}: no data and no parameters.binary_data_size")
        values = _from_json(raw["data"], datatype, shape, count, where)
        return Tensor(name, datatype, shape, values, i), 0
    if has_data:
        raise _bad(f"{where}: give data or parameters.binary_data_size, not both")
    if type(size) is not int or size < 0:
        raise _bad(f"{where}: parameters.binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise _malformed(
            f"{where}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes of binary data left)"
        )
    chunk = binary[offset : offset + size]
    values = from_binary(chunk, datatype, count, where)
    return Tensor(name, datatype, shape, values, i), size


def from_binary(
    chunk: memoryview, datatype: str, count: int, where: str
) -> npt.NDArray[Any] | list[str]:
    """``count`` elements of ``datatype`` from raw little-endian bytes (HTTP's binary tensor
    data, gRPC's ``raw_input_contents``)."""
    if datatype == BYTES:
        return bytes_elements(chunk, count, where)
    dtype = NUMERIC_DTYPES.get(datatype, np.dtype(np.uint8))  # BOOL: one byte each
    if len(chunk) != count * dtype.itemsize:
        raise _malformed(
            f"{where}: binary_data_size is {len(chunk)} bytes but shape and datatype "
            f"{datatype} need {count * dtype.itemsize}"
        )
    array = np.frombuffer(chunk, dtype=dtype)
    if datatype == BOOL:
        if array.size and array.max() > 1:
            raise _bad(f"{where}: BOOL elements must be bytes 0 or 1")
        return array.view(np.bool_)
    return array


def _flatten(data: list[Any], depth: int, where: str) -> list[Any]:
    """Nested lists, flat; nested at most ``depth`` deep (the shape's dimensions). A loop,
    not recursion: JSON may nest deeper than Python recurses."""
    if not any(type(x) is list for x in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if type(x) is list:
                if len(stack) >= depth:
                    raise _bad(
                        f"{where}: data is nested deeper than its shape's {depth} dimension(s)"
                    )
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _shown(value: Any) -> str:
    """A value the client sent, for a message: short, and never a walk of nested containers
    (their repr recurses, and JSON nests deeper than Python recurses)."""
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _from_json(
    data: Any, datatype: str, shape: tuple[int, ...], count: int, where: str
) -> npt.NDArray[Any] | list[str]:
    if not isinstance(data, list):
        raise _bad(f"{where}: data must be a list (flat or nested like the shape)")
    if datatype == BYTES:
        flat = _flatten(data, len(shape), where)
        if len(flat) != count:
            raise _bad(
                f"{where}: shape {list(shape)} needs {count} elements but data has {len(flat)}"
            )
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise _bad(f"{where}: BYTES element {i} must be a string, not {_shown(value)}")
        return flat
    try:
        array = np.array(data)
    except (ValueError, TypeError):
        raise _bad(f"{where}: data is not a flat or evenly nested list of numbers") from None
    if array.ndim > 1 and array.shape != shape:
        raise _bad(f"{where}: data is nested as {list(array.shape)}, not as shape {list(shape)}")
    if array.size != count:
        raise _bad(f"{where}: shape {list(shape)} needs {count} elements but data has {array.size}")
    array = array.reshape(-1)
    kind = array.dtype.kind if array.size else ("b" if datatype == BOOL else "i")
    if datatype == BOOL:
        if kind != "b":
            raise _bad(f"{where}: BOOL data must be true or false")
        return array.astype(np.bool_, copy=False)
    problem = numbers_problem(array, kind, datatype)
    if problem is not None:
        raise _bad(f"{where}: {problem}")
    return array
