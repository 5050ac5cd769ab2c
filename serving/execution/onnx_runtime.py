"""An ONNX Runtime session that answers like the scikit-learn pipeline it was converted from.

:class:`OnnxModel` takes exactly the input the fitted pipeline takes (a float64 array, or a
DataFrame for ``input_format == "dataframe"``) and offers ``predict``, ``predict_proba`` and
``classes_``, so the serving runtime can hold either object, and training's parity check runs
the very code that serves.

Labels never come back from the session as text. For a large batch, ONNX Runtime turns a string
tensor into one new Python string per row, which then cost again to pickle back to the parent
(one copy per row) and to write as JSON. Instead the session returns the class index the graph
picks its label with, or only the probabilities when the label is their argmax
(``labels_from_probabilities``), and labels are taken from one array of the manifest's classes:
the same values, shared by every row.
"""

from __future__ import annotations

from dataclasses import dataclass
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
class OnnxIO:
    """What the graph's inputs and outputs look like: the parts of a manifest it needs."""

    task: Task
    input_format: Literal["ndarray", "dataframe"]
    features: list[Feature]
    classes: list[Any] | None
    labels_from_probabilities: bool = False

    @classmethod
    def of(cls, manifest: Manifest) -> OnnxIO:
        return cls(
            manifest.task,
            manifest.input_format,
            manifest.features,
            manifest.target.classes,
            manifest.onnx is not None and manifest.onnx.labels_from_probabilities,
        )


def _label_index(graph: Any, classes: list[Any]) -> str | None:
    """The tensor holding the index into ``classes`` that the ``label`` output is looked up
    with (skl2onnx's linear and other non-tree classifiers: ``Reshape(ArrayFeatureExtractor(
    classes, index))``), or None when the graph is not built that way or its classes differ."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    name = graph.output[0].name if graph.output else None
    node = producers.get(name) if name is not None else None
    while node is not None and node.op_type in ("Reshape", "Identity"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ArrayFeatureExtractor" or node.domain != "ai.onnx.ml":
        return None
    table = initializers.get(node.input[0])
    if table is None:
        return None
    from onnx import numpy_helper

    values = numpy_helper.to_array(table).ravel().tolist()
    values = [v.decode() if isinstance(v, bytes) else v for v in values]
    if [str(v) for v in values] != [str(c) for c in classes]:
        return None
    return str(node.input[1])


_LABELLING_OPS = {"TreeEnsembleClassifier", "LinearClassifier", "SVMClassifier"}


def _index_labels(graph: Any, classes: list[Any]) -> str | None:
    """Make an ai.onnx.ml classifier op that writes the ``label`` output from its text class
    labels write each class's position instead (``classlabels_int64s`` = 0, 1, ...); return
    the output's name, or None when the graph is not built that way or its classes differ.
    The op chooses the class exactly as before; only the table it writes it from changes."""
    from onnx import TensorProto, helper

    if not graph.output:
        return None
    label = graph.output[0]
    node = next((n for n in graph.node if n.output and n.output[0] == label.name), None)
    if node is None or node.domain != "ai.onnx.ml" or node.op_type not in _LABELLING_OPS:
        return None
    attributes = {a.name: a for a in node.attribute}
    texts = attributes.get("classlabels_strings")
    if texts is None or [t.decode() for t in texts.strings] != [str(c) for c in classes]:
        return None
    kept = [a for a in node.attribute if a.name != "classlabels_strings"]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute("classlabels_int64s", list(range(len(classes)))))
    label.type.tensor_type.elem_type = TensorProto.INT64
    return str(label.name)


def _with_label_index(onnx: bytes, classes: list[Any]) -> tuple[bytes, str] | None:
    """The graph with its label's class index as an output, or None (see _label_index and
    _index_labels)."""
    try:
        import onnx as onnx_lib
    except ImportError:
        return None
    model = onnx_lib.load_from_string(onnx)
    index = _label_index(model.graph, classes) or _index_labels(model.graph, classes)
    if index is None:
        return None
    if index not in {o.name for o in model.graph.output}:
        model.graph.output.append(
            onnx_lib.helper.make_tensor_value_info(index, onnx_lib.TensorProto.INT64, None)
        )
    return model.SerializeToString(), index


def _pruned(onnx: bytes, outputs: list[str]) -> bytes | None:
    """The graph with only the nodes, initializers and outputs that ``outputs`` need
    (``onnx.utils.Extractor``); None when that is all of it (or when a subgraph could read any
    tensor)."""
    import onnx as onnx_lib
    from onnx.utils import Extractor

    model = onnx_lib.load_from_string(onnx)
    graph = model.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for node in graph.node for a in node.attribute):
        return None
    # Extractor rebuilds the graph even when every node is needed (a 2.5 MB forest: 10 ms to
    # load, 59 ms with the copy): a walk back from the outputs tells that case first.
    if [o.name for o in graph.output] == outputs and _needs_every_node(graph, outputs):
        return None
    inputs = [i.name for i in graph.input]
    return bytes(Extractor(model).extract_model(inputs, outputs).SerializeToString())


def _needs_every_node(graph: Any, outputs: list[str]) -> bool:
    """Whether every node of ``graph`` (topologically sorted) feeds one of ``outputs``."""
    needed = set(outputs)
    for node in reversed(graph.node):
        if not any(name in needed for name in node.output):
            return False
        needed.update(name for name in node.input if name)
    return True


class OnnxModel:
    """Predict with an ONNX graph of a scikit-learn pipeline (float64 inputs, zipmap off).

    Inputs: a 2-D float64 array (input_format "ndarray"), or anything indexable by feature
    name (a DataFrame, or a dict of 1-D arrays) for per-column graphs."""

    def __init__(self, signature: OnnxIO, onnx: bytes, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxUnavailableError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        # Workers run side by side; one intra-op thread each keeps them from oversubscribing.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = onnx
        self.task = signature.task
        self._argmax_labels = signature.labels_from_probabilities
        classes = signature.classes
        self._label_from: str | None = None
        """Output holding the class index of each row's label (None: the label output)."""
        if classes is not None and not self._argmax_labels:
            exposed = _with_label_index(source, classes)
            if exposed is not None:
                source, self._label_from = exposed
        full = ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._per_column = signature.input_format == "dataframe"
        self._categorical = {
            f.name for f in signature.features if f.kind == FeatureKind.CATEGORICAL
        }
        self._input_names = [i.name for i in full.get_inputs()]
        self._outputs = [o.name for o in full.get_outputs()]
        # ONNX Runtime runs every node of a graph, whichever outputs are fetched: a session
        # per kind of call, each running only what that call fetches (the label's text, for
        # one, never is). 10 000 iris rows: 0.80 ms with everything, 0.20 ms for labels.
        self._sessions: dict[str, Any] = {}
        for kind, fetched in self._fetches().items():
            pruned = _pruned(source, fetched)
            self._sessions[kind] = (
                full
                if pruned is None
                else ort.InferenceSession(
                    pruned, sess_options=options, providers=["CPUExecutionProvider"]
                )
            )
        self.classes_ = np.asarray(classes) if classes is not None else None
        # What labels are taken from: the classes as the pipeline's predict returns them
        # (ints stay ints, anything else is an object array of the very class values).
        self._label_values: npt.NDArray[Any] | None = None
        if self.classes_ is not None:
            self._label_values = (
                self.classes_
                if self.classes_.dtype.kind in "iub"
                else np.array(list(classes or []), dtype=object)
            )
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

    def _fetches(self) -> dict[str, list[str]]:
        """The outputs each kind of call fetches: ``both`` (labels or values, and what else
        the answer needs), and ``labels`` alone when the label comes from its index."""
        if self.task == Task.REGRESSION:
            return {"both": self._outputs[:1]}
        if self._argmax_labels:
            return {"both": self._outputs[1:2]}
        if self._label_from is not None:
            return {"labels": [self._label_from], "both": [self._label_from, self._outputs[1]]}
        return {"both": self._outputs[:2]}

    @property
    def labels(self) -> npt.NDArray[Any] | None:
        """What the class indices of :meth:`predict_indexed` stand for (None: a regressor)."""
        return self._label_values

    def predict_indexed(
        self, X: Any, want_probabilities: bool = True
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64] | None, bool]:
        """Like :meth:`predict_both`, but classifier labels as their positions in
        :attr:`labels` where the graph gives those (the third value says so): a position
        crosses a process boundary as a number, a label as an object to pickle."""
        feed = self._feed(X)
        both = self._sessions["both"]
        if self.task == Task.REGRESSION:
            out = both.run(self._outputs[:1], feed)
            return np.asarray(out[0], dtype=np.float64).ravel(), None, False
        values = self._label_values
        if self._argmax_labels and values is not None:
            (scores,) = both.run(self._outputs[1:2], feed)
            probabilities = np.asarray(scores, dtype=np.float64)
            return np.argmax(probabilities, axis=1), probabilities, True
        if self._label_from is not None and values is not None:
            if not want_probabilities:
                (index,) = self._sessions["labels"].run([self._label_from], feed)
                return np.asarray(index, dtype=np.intp).ravel(), None, True
            out = both.run([self._label_from, self._outputs[1]], feed)
            index = np.asarray(out[0], dtype=np.intp).ravel()
            return index, np.asarray(out[1], dtype=np.float64), True
        out = both.run(self._outputs[:2], feed)
        probabilities = np.asarray(out[1], dtype=np.float64)
        labels = np.asarray(out[0]).ravel()
        # Same label dtype as the pipeline's predict: ints stay ints, text becomes object.
        if self.classes_ is not None and self.classes_.dtype.kind in "iub":
            labels = labels.astype(self.classes_.dtype)
        else:
            labels = labels.astype(object)
        return labels, probabilities, False

    def predict_both(
        self, X: Any, want_probabilities: bool = True
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64] | None]:
        """Labels (or values) and, for classifiers, probabilities from one session run
        (None instead of the probabilities when they are not wanted and labels do not need
        them)."""
        values, probabilities, indexed = self.predict_indexed(X, want_probabilities)
        if indexed:
            assert self._label_values is not None
            values = self._label_values[values]
        return values, probabilities

    def predict(self, X: Any) -> npt.NDArray[Any]:
        return self.predict_both(X)[0]

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        proba = self.predict_both(X)[1]
        if proba is None:
            raise AttributeError("a regressor has no predict_proba")
        return proba
