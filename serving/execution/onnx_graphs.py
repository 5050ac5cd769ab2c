"""Graphs made ready to serve: the rewrites and pruning of a model's ONNX graph that let each
kind of call run only what it fetches (see :class:`serving.execution.onnx_runtime.OnnxModel`).

This needs the ``onnx`` package (14 MB in every process that imports it). Training prepares the
graphs once, when it exports a version, and writes them into the artifact; a pool worker then
hands them to ONNX Runtime as they are and never imports ``onnx``. Only a version exported
before the artifact held them is prepared here at load.
"""

from __future__ import annotations

from typing import Any

from serving.execution.onnx_runtime import OnnxIO, ServingGraphs, fetches


def prepare(onnx: bytes, signature: OnnxIO) -> ServingGraphs:
    """The graph each kind of call runs (see :func:`fetches`): the label exposed as its class
    index where the graph allows it, then pruned to the outputs that kind fetches."""
    import onnx as onnx_lib

    source = onnx
    label_from: str | None = None
    classes = signature.classes
    if classes is not None and not signature.labels_from_probabilities:
        exposed = _with_label_index(source, classes)
        if exposed is not None:
            source, label_from = exposed
    graph = onnx_lib.load_from_string(source).graph
    constants = {init.name for init in graph.initializer}  # listed as inputs before IR 4
    inputs = [i.name for i in graph.input if i.name not in constants]
    outputs = [o.name for o in graph.output]
    kinds = fetches(signature.task, signature.labels_from_probabilities, outputs, label_from)
    graphs = {kind: _pruned(source, fetched) or source for kind, fetched in kinds.items()}
    return ServingGraphs(graphs, inputs, outputs, label_from)


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
    import onnx as onnx_lib

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
    constants = {init.name for init in graph.initializer}  # listed as inputs before IR 4
    inputs = [i.name for i in graph.input if i.name not in constants]
    return bytes(Extractor(model).extract_model(inputs, outputs).SerializeToString())


def _needs_every_node(graph: Any, outputs: list[str]) -> bool:
    """Whether every node of ``graph`` (topologically sorted) feeds one of ``outputs``."""
    needed = set(outputs)
    for node in reversed(graph.node):
        if not any(name in needed for name in node.output):
            return False
        needed.update(name for name in node.input if name)
    return True
