"""An ONNX Runtime session that answers like the scikit-learn pipeline it was converted from.

:class:`OnnxModel` takes exactly the input the fitted pipeline takes (a float64 array, or a
DataFrame for ``input_format == "dataframe"``) and offers ``predict``, ``predict_proba`` and
``classes_``, so the serving runtime can hold either object, and training's parity check runs
the very code that serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from serving.store import Feature, FeatureKind, Manifest, Task


class OnnxUnavailableError(Exception):
    """onnxruntime is not installed (the scikit-learn runtime still works)."""


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


@dataclass(frozen=True)
class Signature:
    """What the graph's inputs and outputs look like: the parts of a manifest it needs."""

    task: Task
    input_format: Literal["ndarray", "dataframe"]
    features: list[Feature]
    classes: list[Any] | None
    labels_from_probabilities: bool = False

    @classmethod
    def of(cls, manifest: Manifest) -> Signature:
        return cls(
            manifest.task,
            manifest.input_format,
            manifest.features,
            manifest.target.classes,
            manifest.onnx is not None and manifest.onnx.labels_from_probabilities,
        )


class OnnxModel:
    """Predict with an ONNX graph of a scikit-learn pipeline (float64 inputs, zipmap off).

    Inputs: a 2-D float64 array (input_format "ndarray"), or anything indexable by feature
    name (a DataFrame, or a dict of 1-D arrays) for per-column graphs."""

    def __init__(self, signature: Signature, onnx: bytes | Path, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxUnavailableError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        # Workers run side by side; one intra-op thread each keeps them from oversubscribing.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = str(onnx) if isinstance(onnx, Path) else onnx
        self._session = ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._per_column = signature.input_format == "dataframe"
        self._categorical = {
            f.name for f in signature.features if f.kind == FeatureKind.CATEGORICAL
        }
        self._input_names = [i.name for i in self._session.get_inputs()]
        self.task = signature.task
        self._argmax_labels = signature.labels_from_probabilities
        classes = signature.classes
        self.classes_ = np.asarray(classes) if classes is not None else None
        self.n_features_in_ = len(signature.features)

    def _feed(self, X: Any) -> dict[str, Any]:
        if not self._per_column:
            return {self._input_names[0]: np.ascontiguousarray(X, dtype=np.float64)}
        feed: dict[str, Any] = {}
        for name in self._input_names:
            column = np.asarray(X[name])  # a DataFrame column or a plain array
            if name in self._categorical:
                # Missing categories go in as an empty string: not a training category, so
                # the one-hot encoder ignores it exactly as the pipeline's does for None.
                values = np.array(["" if v is None else str(v) for v in column], dtype=object)
                feed[name] = values.reshape(-1, 1)
            else:
                feed[name] = column.astype(np.float64).reshape(-1, 1)
        return feed

    def predict_both(self, X: Any) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64] | None]:
        """Labels (or values) and, for classifiers, probabilities from one session run."""
        out = self._session.run(None, self._feed(X))
        if self.task == Task.REGRESSION:
            return np.asarray(out[0], dtype=np.float64).ravel(), None
        probabilities = np.asarray(out[1], dtype=np.float64)
        if self._argmax_labels and self.classes_ is not None:
            return self.classes_[np.argmax(probabilities, axis=1)], probabilities
        labels = np.asarray(out[0]).ravel()
        # Same label dtype as the pipeline's predict: ints stay ints, text becomes object.
        if self.classes_ is not None and self.classes_.dtype.kind in "iub":
            labels = labels.astype(self.classes_.dtype)
        else:
            labels = labels.astype(object)
        return labels, probabilities

    def predict(self, X: Any) -> npt.NDArray[Any]:
        return self.predict_both(X)[0]

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        proba = self.predict_both(X)[1]
        if proba is None:
            raise AttributeError("a regressor has no predict_proba")
        return proba
