"""Request bodies in every form a scenario sends (bench/README.md), and their answers. Values
are drawn uniformly within each feature's training range, so no cache can answer from memory.
"""

import json
import math
import random
import struct
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.grpc_load import METHOD, SCHEME
from serving.grpc.generated import inference_pb2 as pb
from serving.store import Feature, FeatureKind

Value = float | int | bool | str | None
Row = list[Value]
Body = tuple[bytes, int]
"""A request body and the length of its JSON header (0: a plain JSON body)."""

_LENGTH = struct.Struct("<I")
_V2_TYPES = {FeatureKind.NUMERIC: "FP64", FeatureKind.INTEGER: "INT64", FeatureKind.BOOLEAN: "BOOL"}
_NUMPY = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}


def sample_rows(features: Sequence[Feature], n: int, seed: int) -> list[Row]:
    """``n`` rows; one seed gives the same rows, whichever form encodes them."""
    rng = random.Random(seed)
    return [[_value(f, rng) for f in features] for _ in range(n)]


def _value(feature: Feature, rng: random.Random) -> Value:
    if feature.kind is FeatureKind.BOOLEAN:
        return rng.random() < 0.5
    if feature.kind is FeatureKind.CATEGORICAL:
        return rng.choice(feature.categories) if feature.categories else str(feature.example)
    low = feature.min if feature.min is not None else -1.0
    high = feature.max if feature.max is not None else 1.0
    if feature.kind is FeatureKind.INTEGER:
        return rng.randint(round(low), round(high))
    return round(rng.uniform(low, high), 4)


def _json(document: Any) -> Body:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode(), 0


def _tensors(
    features: Sequence[Feature], rows: Sequence[Row], by_feature: bool = False
) -> list[tuple[Any, Any, bytes]]:
    """(tensor header, JSON data, binary data) per input: one 2-D ``input`` tensor, or one per
    feature when asked or when there are categories."""
    n = len(rows)
    if not by_feature and all(f.kind is not FeatureKind.CATEGORICAL for f in features):
        matrix = np.asarray(rows, dtype=np.float64)
        head = {"name": "input", "shape": [n, len(features)], "datatype": "FP64"}
        return [(head, matrix.reshape(-1).tolist(), matrix.astype("<f8").tobytes())]
    out = []
    for i, feature in enumerate(features):
        column: Any = [row[i] for row in rows]
        datatype = _V2_TYPES.get(feature.kind, "BYTES")
        if datatype == "BYTES":
            raw = b"".join(_LENGTH.pack(len(s)) + s for s in (str(v).encode() for v in column))
        else:
            array = np.asarray(column, dtype=_NUMPY[datatype])
            column, raw = array.tolist(), array.tobytes()
        out.append(({"name": feature.name, "shape": [n], "datatype": datatype}, column, raw))
    return out


def encode(
    request: str,
    features: Sequence[Feature],
    rows: Sequence[Row],
    dataframe: bool = False,
    model: str = "",
) -> Body:
    """``rows`` as one body of the ``request`` form (``dataframe``: the model takes a DataFrame;
    ``model``: the name a gRPC request carries)."""
    if request in ("typed", "explain"):
        names = [f.name for f in features]
        instances = [dict(zip(names, row, strict=True)) for row in rows]
        if request == "explain":
            return _json({"instances": instances, "explain": True})
        return _json({"instances": instances})
    if request == "rows":
        return _json({"rows": list(rows)})
    tensors = _tensors(features, rows, by_feature=request == "mlserver" and dataframe)
    if request == "grpc":  # as tritonclient.grpc sends numpy inputs: raw contents
        message = pb.ModelInferRequest(
            model_name=model, raw_input_contents=[r for *_, r in tensors]
        )
        for head, _, _ in tensors:
            message.inputs.add(name=head["name"], datatype=head["datatype"], shape=head["shape"])
        message.outputs.add(name="predict")  # what the typed and v2 JSON forms answer
        return message.SerializeToString(), 0
    inputs = [{**head, "data": data} for head, data, _ in tensors]
    if request == "v2json":
        return _json({"inputs": inputs, "outputs": [{"name": "predict"}]})
    if request == "mlserver" and dataframe:  # MLServer's pandas codec makes a DataFrame of it
        return _json({"parameters": {"content_type": "pd"}, "inputs": inputs})
    if request == "mlserver":
        return _json({"inputs": [{**inputs[0], "name": "input-0"}]})
    if request != "v2binary":
        raise ValueError(f"unknown request form {request!r}")
    header = {
        "inputs": [{**h, "parameters": {"binary_data_size": len(raw)}} for h, _, raw in tensors],
        "parameters": {"binary_data_output": True},
    }
    head_bytes = json.dumps(header, separators=(",", ":")).encode()
    return head_bytes + b"".join(raw for _, _, raw in tensors), len(head_bytes)


def write(path: Path, bodies: Sequence[Body]) -> Path:
    """Records for ``bench/post.lua``: ``<json header length> <body length>\\n<body>``."""
    with path.open("wb") as fh:
        for raw, header_length in bodies:
            fh.write(f"{header_length} {len(raw)}\n".encode() + raw)
    return path


def predictions(answer: bytes, header_length: int | None) -> list[Any]:
    """The predictions of a typed answer or the ``predict`` output of an inference answer."""
    split = len(answer) if header_length is None else header_length
    document = json.loads(answer[:split])
    if "predictions" in document:
        return list(document["predictions"])
    for output in document["outputs"]:  # binary outputs follow the header in this order
        size = output.get("parameters", {}).get("binary_data_size")
        chunk, split = answer[split : split + (size or 0)], split + (size or 0)
        if output["name"] != "predict":
            continue
        if size is None:
            return list(output["data"])
        if output["datatype"] != "BYTES":
            return _numbers(chunk, output["datatype"])
        return _labels(chunk)
    raise ValueError("the answer has no predict output")


def grpc_predictions(answer: bytes) -> list[Any]:
    """The ``predict`` output of a ``ModelInferResponse``."""
    response = pb.ModelInferResponse.FromString(answer)
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if output.name == "predict":
            return _labels(raw) if output.datatype == "BYTES" else _numbers(raw, output.datatype)
    raise ValueError("the answer has no predict output")


def _numbers(raw: bytes, datatype: str) -> list[Any]:
    return list(np.frombuffer(raw, dtype=_NUMPY[datatype]).tolist())


def _labels(chunk: bytes) -> list[str]:
    labels = []
    while chunk:
        (n,) = _LENGTH.unpack_from(chunk)
        labels.append(chunk[4 : 4 + n].decode())
        chunk = chunk[4 + n :]
    return labels


def call(target: str, body: Body) -> list[Any]:
    """One ``ModelInfer`` call to ``target`` (``grpc://host:port``); its predictions, or
    ValueError."""
    with grpc.insecure_channel(target.removeprefix(SCHEME)) as channel:
        try:
            answer = channel.unary_unary(METHOD)(body[0], timeout=60)
        except grpc.RpcError as exc:
            raise ValueError(f"ModelInfer at {target} -> {exc.code()}: {exc.details()}") from None
    return grpc_predictions(answer)


def post(url: str, body: Body) -> list[Any]:
    """POST one body; its predictions, or ValueError unless it is answered like a prediction."""
    raw, header_length = body
    headers = {"Content-Type": "application/octet-stream" if header_length else "application/json"}
    if header_length:
        headers["Inference-Header-Content-Length"] = str(header_length)
    request, answer = urllib.request.Request(url, data=raw, headers=headers, method="POST"), b""
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer, length = resp.read(), resp.headers.get("Inference-Header-Content-Length")
        return predictions(answer, None if length is None else int(length))
    except urllib.error.HTTPError as exc:
        raise ValueError(f"POST {url} -> HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except OSError as exc:
        raise ValueError(f"POST {url}: {exc}") from None
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ValueError(f"unreadable answer ({exc}): {answer[:300]!r}") from exc


def same(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Labels equal as text, numbers within float32 rounding (ONNX Runtime serves float32)."""

    def eq(x: Any, y: Any) -> bool:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))
        return math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) if numbers else str(x) == str(y)

    return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b, strict=True))
