"""``ModelInferRequest`` bytes to rows and a prediction to ``ModelInferResponse`` bytes: the Open
Inference Protocol over gRPC as a codec of the one request path
(:func:`serving.core.predictor.answer`), next to the HTTP codecs.

Inputs come as typed ``contents`` or as ``raw_input_contents`` (what tritonclient sends by
default), and are checked exactly as over HTTP: the model's signature
(:class:`serving.codecs.oip.signature.Signature`) turns them into rows, so shapes, datatypes,
element counts and values get the same checks and the same messages. Outputs always travel as
``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from serving.codecs.oip.datatypes import (
    BOOL,
    BYTES,
    DATATYPES,
    INT_TYPES,
    OutputTensor,
    RequestedOutput,
    Tensor,
    numbers_problem,
)
from serving.codecs.oip.responses import binary_data
from serving.codecs.oip.service import InferenceService
from serving.codecs.oip.signature import PREDICT_PROBA, Signature
from serving.codecs.oip.tensors import from_binary
from serving.core.dataplane import ServedModel
from serving.core.errors import InvalidInputError, MalformedRequestError
from serving.core.predictor import Headers, PredictionResult
from serving.execution.runtime import FloatArray
from serving.grpc.generated import inference_pb2 as pb

_CONTENTS = {
    BOOL: "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
"""The ``InferTensorContents`` field of each datatype (FP16 has none: raw only)."""
_HEADS = 256
"""Serialized response heads kept (model versions x output shapes; rows vary the shapes)."""


class GrpcInfer(NamedTuple):
    rows: FloatArray
    want_probabilities: bool
    signature: Signature
    wanted: list[RequestedOutput]
    request_id: str
    explain: tuple[str | int, ...] | None = None


def parse(body: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(body)
    except DecodeError:
        raise MalformedRequestError("the request is not a valid ModelInferRequest") from None


class GrpcCodec:
    """``ModelInfer`` through the request path (``transport`` names it in captured rows)."""

    transport = "grpc"

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.last: tuple[bytes, pb.ModelInferRequest] | None = None
        self.heads: dict[tuple[Any, ...], bytes] = {}

    def parse(self, body: bytes) -> pb.ModelInferRequest:
        """``body`` parsed; the server parses it to find the model, then the request path
        decodes it without a second parse (the same bytes object, just before)."""
        if self.last is not None and self.last[0] is body:
            return self.last[1]
        request = parse(body)
        self.last = (body, request)
        return request

    def decode(self, served: ServedModel, body: bytes, headers: Headers) -> GrpcInfer:
        request = self.parse(body)
        self.last = None
        signature = self.service.signature(served)
        rows = signature.rows(input_tensors(request, signature.max_elements))
        requested = [RequestedOutput(o.name, None) for o in request.outputs]
        for i, output in enumerate(request.outputs):
            if "classification" in output.parameters:
                raise _bad(f"outputs[{i}]: the classification extension is not supported")
        wanted = signature.wanted(requested or None)
        want = any(output.name == PREDICT_PROBA for output in wanted)
        return GrpcInfer(rows, want, signature, wanted, request.id, signature.explain_at(wanted))

    def encode(self, decoded: GrpcInfer, result: PredictionResult) -> tuple[bytes, Headers]:
        tensors = decoded.signature.output_tensors(
            result.prediction, decoded.wanted, True, result.manifest
        )
        head = self.head(result, tensors)
        parts = [head] if not decoded.request_id else [head, _field(3, decoded.request_id.encode())]
        parts += [_field(6, binary_data(tensor)) for tensor in tensors]
        return b"".join(parts), []

    def head(self, result: PredictionResult, tensors: list[OutputTensor]) -> bytes:
        """The response's fields but the id and the raw outputs, serialized by protobuf once
        per model version and output shapes (a message's fields may come in any order)."""
        key = (result.model, result.version, *((t.name, t.datatype, t.shape) for t in tensors))
        head = self.heads.get(key)
        if head is None:
            response = pb.ModelInferResponse(
                model_name=result.model, model_version=str(result.version)
            )
            for tensor in tensors:
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            head = response.SerializeToString()
            if len(self.heads) >= _HEADS:
                self.heads.clear()
            self.heads[key] = head
        return head


def _field(number: int, value: bytes | memoryview) -> bytes:
    """A length-delimited field (protobuf's wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def input_tensors(request: pb.ModelInferRequest, budget: int) -> list[Tensor]:
    """The request's inputs as tensors; ``budget``: the most elements they may hold together."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _bad(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in input order"
        )
    out: list[Tensor] = []
    for i, given in enumerate(request.inputs):
        where = f"inputs[{i}] {given.name!r}"
        datatype = given.datatype
        if datatype not in DATATYPES:
            raise _bad(
                f"{where}: datatype {datatype!r} is not one of {', '.join(sorted(DATATYPES))}"
            )
        shape = tuple(given.shape)
        if not shape or any(d < 0 for d in shape):
            raise _bad(f"{where}: shape must be a non-empty list of non-negative integers")
        count = math.prod(shape)
        if count > budget:
            raise _bad(
                f"{where}: shape {list(shape)} makes the inputs hold far more elements than this "
                "model takes in one request (its features times the most rows per request)"
            )
        budget -= count
        if raw:
            if given.HasField("contents"):
                raise _bad(f"{where}: give contents or raw_input_contents, not both")
            values = from_binary(memoryview(raw[i]), datatype, count, where)
        else:
            values = _from_contents(given, datatype, count, where)
        out.append(Tensor(given.name, datatype, shape, values, i))
    return out


def _from_contents(
    given: Any, datatype: str, count: int, where: str
) -> npt.NDArray[Any] | list[str]:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise _bad(f"{where}: {datatype} travels only as raw_input_contents")
    elements = getattr(given.contents, field)
    if len(elements) != count:
        raise _bad(f"{where}: shape needs {count} elements but {field} has {len(elements)}")
    if datatype == BYTES:
        try:
            return [value.decode("utf-8") for value in elements]
        except UnicodeDecodeError:
            raise _bad(f"{where}: BYTES elements must be UTF-8 text") from None
    if datatype == BOOL:
        return np.fromiter(elements, dtype=np.bool_, count=count)
    if datatype in INT_TYPES:
        # Read wide first: int_contents may hold values INT8 or UINT16 cannot.
        array = np.array(elements, dtype=np.uint64 if datatype == "UINT64" else np.int64)
        problem = numbers_problem(array, array.dtype.kind, datatype)
        if problem is not None:
            raise _bad(f"{where}: {problem}")
        return array
    return np.array(elements, dtype=np.float64)


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message)
