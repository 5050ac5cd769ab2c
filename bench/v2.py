"""Open Inference Protocol (v2) request bodies for the benchmark, and reading their answers.

The same rows as the typed scenarios (same seeds), sent to ``POST /v2/models/{name}/infer``
in two forms. Models without categorical features get one 2-D ``input`` tensor; others one
tensor per feature.

- ``v2json``: a plain JSON body asking only for the ``predict`` output (as the typed requests
  ask only for predictions), answered in JSON: what a hand-written JSON client sends.
- ``v2binary``: exactly what ``tritonclient.http.InferenceServerClient.infer`` sends by default
  for numpy inputs: the tensors as binary data after the JSON header, no ``outputs`` list, and
  so ``parameters.binary_data_output: true`` (the client sets it when no output is named):
  every output of the model comes back, in binary (``predict`` and, for classifiers,
  ``predict_proba``). It does more than the typed ``rows`` request it is compared with.

Bodies are written as binary-safe records for ``bench/post_v2.lua``:
``<json header length> <body length>\\n<body bytes>`` (header length 0: plain JSON).
"""

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import Row
from serving.store import FeatureKind, Manifest

V2_JSON = "v2json"
V2_BINARY = "v2binary"
PROTOCOLS = (V2_JSON, V2_BINARY)
LUA_SCRIPT = Path(__file__).with_name("post_v2.lua")
_LENGTH = struct.Struct("<I")
_DATATYPE = {
    FeatureKind.NUMERIC: ("FP64", "<f8"),
    FeatureKind.INTEGER: ("INT64", "<i8"),
    FeatureKind.BOOLEAN: ("BOOL", "|b1"),
}


def path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def _bytes_tensor(values: Sequence[Any]) -> bytes:
    parts = []
    for value in values:
        raw = str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(raw)) + raw)
    return b"".join(parts)


def _tensors(manifest: Manifest, rows: Sequence[Row]) -> list[tuple[dict[str, Any], Any, bytes]]:
    """(tensor JSON without data, JSON data, binary data) per input tensor."""
    n = len(rows)
    if all(f.kind != FeatureKind.CATEGORICAL for f in manifest.features):
        matrix = np.asarray(rows, dtype=np.float64)
        head = {"name": "input", "shape": [n, len(manifest.features)], "datatype": "FP64"}
        return [(head, matrix.reshape(-1).tolist(), matrix.astype("<f8").tobytes())]
    out = []
    for i, feature in enumerate(manifest.features):
        column = [row[i] for row in rows]
        if feature.kind == FeatureKind.CATEGORICAL:
            head = {"name": feature.name, "shape": [n], "datatype": "BYTES"}
            out.append((head, column, _bytes_tensor(column)))
            continue
        datatype, dtype = _DATATYPE[feature.kind]
        array = np.asarray(column, dtype=dtype)
        head = {"name": feature.name, "shape": [n], "datatype": datatype}
        out.append((head, array.tolist(), array.tobytes()))
    return out


def body(manifest: Manifest, rows: Sequence[Row], protocol: str) -> tuple[bytes, int]:
    """One request body and the length of its JSON part (0 for a plain JSON body)."""
    tensors = _tensors(manifest, rows)
    document: dict[str, Any]
    if protocol == V2_JSON:
        document = {
            "inputs": [{**head, "data": data} for head, data, _ in tensors],
            "outputs": [{"name": "predict"}],
        }
        return json.dumps(document, separators=(",", ":"), allow_nan=False).encode(), 0
    document = {
        "inputs": [
            {**head, "parameters": {"binary_data_size": len(raw)}} for head, _, raw in tensors
        ],
        # tritonclient's default: no outputs named, every output in binary.
        "parameters": {"binary_data_output": True},
    }
    head_bytes = json.dumps(document, separators=(",", ":")).encode()
    return head_bytes + b"".join(raw for _, _, raw in tensors), len(head_bytes)


def write_bodies(file: Path, bodies: Sequence[tuple[bytes, int]]) -> Path:
    with file.open("wb") as fh:
        for raw, header_length in bodies:
            fh.write(f"{header_length} {len(raw)}\n".encode())
            fh.write(raw)
    return file


def read_first(file: Path) -> tuple[bytes, int]:
    with file.open("rb") as fh:
        header_length, length = map(int, fh.readline().split())
        return fh.read(length), header_length


def _decode_predict(raw: bytes, header_length: str | None) -> list[Any]:
    split = len(raw) if header_length is None else int(header_length)
    document = json.loads(raw[:split])
    offset = split
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if output["name"] != "predict":
            offset += size or 0
            continue
        if size is None:
            return list(output["data"])
        chunk = raw[offset : offset + size]
        datatype = output["datatype"]
        if datatype == "BYTES":
            labels: list[Any] = []
            position = 0
            while position < len(chunk):
                (length,) = _LENGTH.unpack_from(chunk, position)
                labels.append(chunk[position + 4 : position + 4 + length].decode())
                position += 4 + length
            return labels
        dtype = {"FP64": "<f8", "INT64": "<i8", "BOOL": "|b1"}[datatype]
        return list(np.frombuffer(chunk, dtype=dtype).tolist())
    raise ValueError("the response has no predict output")


def preflight(url: str, bodies_file: Path, rows: int, timeout_s: float = 60.0) -> list[Any]:
    """POST the first body once; its predictions, or ValueError unless answered like one."""
    raw, header_length = read_first(bodies_file)
    headers = {"Content-Type": "application/json"}
    if header_length:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
    request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            answer = resp.read()
            length = resp.headers.get("Inference-Header-Content-Length")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", errors="replace")
        raise ValueError(f"preflight POST {url} -> HTTP {exc.code}: {text[:300]}") from None
    try:
        predictions = _decode_predict(answer, length)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ValueError(f"preflight response unreadable ({exc}): {answer[:300]!r}") from exc
    if len(predictions) != rows:
        raise ValueError(f"preflight expected {rows} predictions, got {len(predictions)}")
    return predictions
