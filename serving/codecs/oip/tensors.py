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
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from serving.core.errors import InvalidInputError, MalformedRequestError

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

_LENGTH = struct.Struct("<I")
_MAX_ELEMENTS = 1 << 31
# Some clients repeat the model's name and version in the body (Triton's own examples do).
_REQUEST_FIELDS = frozenset(
    {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
)
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_FIELDS = frozenset({"name", "parameters"})


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
    values = _from_binary(chunk, datatype, count, where)
    return Tensor(name, datatype, shape, values, i), size


def _from_binary(
    chunk: memoryview, datatype: str, count: int, where: str
) -> npt.NDArray[Any] | list[str]:
    if datatype == BYTES:
        return _bytes_elements(chunk, count, where)
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


_FEW_ELEMENTS = 256
"""Smaller BYTES tensors are walked element by element: as fast, and nothing to compile."""
_MAX_LENGTHS = 16
"""BYTES tensors whose elements have more distinct lengths than this are walked."""
_MAX_SPLIT_LENGTH = 1 << 16
"""BYTES tensors with a longer element are walked (long texts are few per byte anyway)."""
_LEARN = 64
"""Elements walked in Python to learn lengths before each run at C speed."""
_MAX_ROUNDS = 2
"""Rounds of learning and running before the tensor is walked instead."""


def _bytes_elements(chunk: memoryview, count: int, where: str) -> list[str]:
    """The elements of a binary BYTES tensor, as text."""
    if count >= _FEW_ELEMENTS:
        split = _split_texts(chunk, count)
        if split is not None:
            return split
    return _walk_bytes_elements(chunk, count, where)


def _split_texts(chunk: memoryview, count: int) -> list[str] | None:
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
            (length,) = _LENGTH.unpack_from(chunk, position)
            if length > _MAX_SPLIT_LENGTH:
                return None
            prefixes.add(bytes(chunk[position : position + 4]))
            position += 4 + length
            if position > end:
                return None
        if len(prefixes) > _MAX_LENGTHS:
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
        re.escape(prefix) + b".{%d}" % _LENGTH.unpack(prefix)[0] for prefix in sorted(prefixes)
    )
    return re.compile(b"(?s)(?:" + alternatives + b")" + repeat)


def _walk_bytes_elements(chunk: memoryview, count: int, where: str) -> list[str]:
    out: list[str] = []
    position = 0
    end = len(chunk)
    for i in range(count):
        if position + 4 > end:
            raise _malformed(f"{where}: BYTES element {i} has no complete 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise _malformed(f"{where}: BYTES element {i} of {length} bytes runs past its data")
        try:
            out.append(str(chunk[position : position + length], "utf-8"))
        except UnicodeDecodeError:
            raise _bad(f"{where}: BYTES element {i} is not UTF-8 text") from None
        position += length
    if position != end:
        raise _malformed(f"{where}: {end - position} bytes left over after {count} BYTES elements")
    return out


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


# -- responses ---------------------------------------------------------------------------------


def frame_texts(values: Iterable[str]) -> dict[str, bytes]:
    """Each distinct text as a BYTES element: its 4-byte little-endian length, then its UTF-8."""
    framed = {}
    for value in values:
        raw = value.encode("utf-8")
        framed[value] = _LENGTH.pack(len(raw)) + raw
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


def _binary(tensor: OutputTensor) -> bytes | memoryview:
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
            blob = _binary(tensor)
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
