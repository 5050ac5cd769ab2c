"""Open Inference Protocol requests through the data plane: the same models, batchers and
pool as the typed endpoints (the same request path, :func:`serving.core.predictor.answer`);
only the encoding of inputs and outputs differs."""

from __future__ import annotations

from typing import Any, NamedTuple

from serving.codecs.oip.headers import infer_headers, response_headers
from serving.codecs.oip.plain import read_plain
from serving.codecs.oip.signature import PREDICT_PROBA, Signature
from serving.codecs.oip.tensors import (
    RequestedOutput,
    decode_json,
    encode_response,
    parse_document,
    split_body,
)
from serving.core.dataplane import DataPlane, ModelState, ServedModel
from serving.core.predictor import Headers, PredictionResult
from serving.execution.executor import ModelKey
from serving.execution.runtime import FloatArray

SERVER_NAME = "servewell"
REPOSITORY_EXTENSION = "model_repository"
"""The protocol's model repository extension (index, load, unload), behind the admin token."""

PLATFORMS = {"onnx": "onnxruntime_onnx", "sklearn": "sklearn"}
"""``platform`` in model metadata, by the runtime serving the model."""

_STATES = {
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.FAILED: "UNAVAILABLE",
}


class InferRequest(NamedTuple):
    rows: FloatArray
    want_probabilities: bool
    signature: Signature
    wanted: list[RequestedOutput]
    request_id: str | None
    binary_output: bool
    explain: tuple[str | int, ...] | None = None


class InferenceService:
    """Model metadata, readiness and inference in protocol terms, for one data plane."""

    transport = "v2"

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self._signatures: dict[ModelKey, Signature] = {}

    def signature(self, served: ServedModel) -> Signature:
        """The model's tensors (cached per version; rebuilt if the version was reloaded)."""
        platform = PLATFORMS.get(served.runtime or "sklearn", "sklearn")
        cached = self._signatures.get(served.key)
        if cached is None or cached.manifest is not served.manifest or cached.platform != platform:
            max_rows = self.dataplane.settings.max_request_rows
            explainable = served.unexplained is None
            cached = Signature(served.manifest, platform, max_rows, explainable)
            self._signatures[served.key] = cached
        return cached

    def metadata(self, served: ServedModel) -> dict[str, Any]:
        name = served.key[0]
        versions = sorted(v for (n, v) in self.dataplane.models if n == name)
        return self.signature(served).metadata(versions)

    def decode(self, served: ServedModel, body: bytes, headers: Headers) -> InferRequest:
        """The rows and wanted outputs of a request body: JSON, or JSON followed by binary
        tensors (``Inference-Header-Content-Length`` gives the JSON part's length). A plain
        JSON request of numbers takes a lane without per-value objects."""
        header_length = infer_headers(headers)
        signature = self.signature(served)
        head, binary = split_body(body, header_length)
        document = decode_json(head)
        plain = None if header_length is not None else read_plain(document, signature)
        if plain is not None:
            request_id, binary_output = plain.id, False
            wanted, rows = signature.wanted(plain.outputs), plain.rows
        else:
            request = parse_document(document, binary, header_length, signature.max_elements)
            request_id, binary_output = request.id, request.binary_output
            wanted = signature.wanted(request.outputs)
            rows = signature.rows(request.inputs)
        want_proba = False
        for output in wanted:
            want_proba = want_proba or output.name == PREDICT_PROBA
        explain = signature.explain_at(wanted)
        return InferRequest(rows, want_proba, signature, wanted, request_id, binary_output, explain)

    def encode(self, decoded: InferRequest, result: PredictionResult) -> tuple[bytes, Headers]:
        """The response body (JSON, then binary tensors when asked) and its headers."""
        outputs = decoded.signature.output_tensors(
            result.prediction, decoded.wanted, decoded.binary_output, result.manifest
        )
        payload, json_length = encode_response(
            result.model, result.version, decoded.request_id, outputs
        )
        return payload, response_headers(len(payload), json_length)

    def repository_index(self, store_names: list[str], ready_only: bool) -> list[dict[str, Any]]:
        """Every model version the service knows, and the store's models it does not serve."""
        dp = self.dataplane
        out: list[dict[str, Any]] = []
        for (name, version), served in sorted(dp.models.items()):
            entry = {"name": name, "version": str(version), "state": _STATES[served.state]}
            if served.error:
                entry["reason"] = served.error
            out.append(entry)
        failed = {**dp.unreadable, **dp.rejected}
        for (name, version), reason in sorted(failed.items()):
            if (name, version) not in dp.models:
                out.append(
                    {
                        "name": name,
                        "version": str(version),
                        "state": "UNAVAILABLE",
                        "reason": reason,
                    }
                )
        for name, reason in sorted(dp.broken_names.items()):
            out.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        known = {entry["name"] for entry in out}
        for name in sorted(set(store_names) - known):
            out.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded"})
        if ready_only:
            out = [entry for entry in out if entry["state"] == "READY"]
        return out
