"""The usual Open Inference Protocol request, read in one pass.

Most JSON clients send one thing: a JSON body (no binary data) with the model's features as
one ``[rows, features]`` tensor named ``input``, its ``data`` inline, and maybe the names of
the outputs they want. For a single row, decoding such a request through the general path
(``tensors.parse_document`` into tensors, then ``Signature.rows``) costs about as much as
the rest of the request (measured: 21 % more event-loop CPU per request than the typed
endpoint, in paired runs on one core). This reads that form with the fewest steps.

It only ever accepts: anything else, valid or not, returns None and goes the general way,
which also explains what is wrong. A request it accepts is one the general path accepts too,
with the same rows and outputs (tests/serving/codecs/oip/test_plain.py checks both ways).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.codecs.oip.signature import MATRIX_INPUT, Signature
from serving.codecs.oip.tensors import NUMERIC_DTYPES, RequestedOutput
from serving.execution.runtime import FloatArray

_REQUEST_FIELDS = frozenset({"id", "inputs", "outputs", "model_name", "model_version"})
"""No ``parameters``: those ask for binary outputs or other extensions."""
_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "data"})
_OUTPUT_FIELDS = frozenset({"name"})


@dataclass(slots=True)
class PlainRequest:
    id: str | None
    rows: FloatArray
    outputs: list[RequestedOutput] | None
    """The outputs asked for (known to the model, each once); None: every one."""


def read_plain(document: Any, signature: Signature) -> PlainRequest | None:
    """The request when it has the usual form (see the module docstring), else None."""
    if type(document) is not dict or not _REQUEST_FIELDS.issuperset(document):
        return None
    request_id = document.get("id")
    inputs = document.get("inputs")
    if request_id is not None and type(request_id) is not str:
        return None
    if type(inputs) is not list or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if type(tensor) is not dict or tensor.keys() != _INPUT_FIELDS:
        return None
    datatype = tensor["datatype"]
    if tensor["name"] != MATRIX_INPUT or type(datatype) is not str:
        return None
    if datatype not in NUMERIC_DTYPES or type(tensor["data"]) is not list:
        return None
    rows = signature.plain_matrix(tensor["shape"], tensor["data"], datatype)
    if rows is None:
        return None
    raw_outputs = document.get("outputs")
    if raw_outputs is None:
        return PlainRequest(request_id, rows, None)
    if type(raw_outputs) is not list:
        return None
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for item in raw_outputs:
        if type(item) is not dict or item.keys() != _OUTPUT_FIELDS:
            return None
        name = item["name"]
        if type(name) is not str or name in names or name not in signature.outputs:
            return None
        names.add(name)
        outputs.append(RequestedOutput(name, None))
    return PlainRequest(request_id, rows, outputs)
