"""Open Inference Protocol requests through the data plane: the same models, batchers and
pool as the typed endpoints; only the encoding of inputs and outputs differs."""

from __future__ import annotations

from typing import Any

from serving.codecs.oip.plain import read_plain
from serving.codecs.oip.signature import PREDICT_PROBA, Signature
from serving.codecs.oip.tensors import decode_json, encode_response, parse_document, split_body
from serving.core.dataplane import DataPlane, ModelState, ServedModel, _refuse_non_finite
from serving.execution.pool import ModelKey

PLATFORMS = {"onnx": "onnxruntime_onnx", "sklearn": "sklearn"}
"""``platform`` in model metadata, by the runtime serving the model."""

_STATES = {
    ModelState.READY: "READY",
    ModelState.LOADING: "LOADING",
    ModelState.FAILED: "UNAVAILABLE",
}


class InferenceService:
    """Model metadata, readiness and inference in protocol terms, for one data plane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self._signatures: dict[ModelKey, Signature] = {}

    def signature(self, served: ServedModel) -> Signature:
        """The model's tensors (cached per version; rebuilt if the version was reloaded)."""
        platform = PLATFORMS.get(served.runtime or "sklearn", "sklearn")
        cached = self._signatures.get(served.key)
        if cached is None or cached.manifest is not served.manifest or cached.platform != platform:
            cached = Signature(served.manifest, platform, self.dataplane.settings.max_request_rows)
            self._signatures[served.key] = cached
        return cached

    def metadata(self, served: ServedModel) -> dict[str, Any]:
        name = served.key[0]
        versions = sorted(v for (n, v) in self.dataplane.models if n == name)
        return self.signature(served).metadata(versions)

    async def infer(
        self, served: ServedModel, body: bytes, header_length: str | None
    ) -> tuple[bytes, int | None]:
        """Request body in; response body out, and the length of its JSON part when binary
        tensor data follows it."""
        if served.retired:  # swapped out while the body was on its way: production answers
            served = self.dataplane.resolve(served.key[0])
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
        result = await self.dataplane.predict(served, rows, want_proba)
        _refuse_non_finite(result.prediction)
        outputs = signature.output_tensors(result.prediction, wanted, binary_output)
        return encode_response(result.model, result.version, request_id, outputs)

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
