"""The ONNX Runtime model: each kind of call runs a session with only the nodes it needs, and
every kind answers alike."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from serving.execution.onnx_runtime import OnnxIO, OnnxModel, _pruned
from serving.store import ModelStore


def _model(store: ModelStore, name: str) -> OnnxModel:
    manifest = store.manifest(name, 1)
    path = store.onnx_path(manifest)
    assert path is not None
    return OnnxModel(OnnxIO.of(manifest), path.read_bytes())


def test_a_labels_call_runs_neither_probabilities_nor_label_text(
    trained_store: ModelStore,
) -> None:
    iris = _model(trained_store, "iris")
    labels, both = iris._sessions["labels"], iris._sessions["both"]
    assert labels is not both
    assert [o.name for o in labels.get_outputs()] == [iris._label_from]
    assert [o.name for o in both.get_outputs()] == [iris._label_from, "probabilities"]
    path = trained_store.onnx_path(trained_store.manifest("iris", 1))
    assert path is not None
    graph = onnx.load_from_string(path.read_bytes())
    assert {"Softmax", "ArgMax", "ArrayFeatureExtractor"} <= {n.op_type for n in graph.graph.node}
    pruned = _pruned(graph.SerializeToString(), ["probabilities"])
    assert pruned is not None
    kept = onnx.load_from_string(pruned)
    assert {"ArgMax", "ArrayFeatureExtractor", "Reshape"}.isdisjoint(
        n.op_type for n in kept.graph.node
    )
    assert [o.name for o in kept.graph.output] == ["probabilities"]
    assert {i.name for i in kept.graph.initializer} <= {i for n in kept.graph.node for i in n.input}


@pytest.mark.parametrize("name", ["iris", "churn", "breast_cancer", "diabetes"])
def test_every_kind_of_call_gives_the_same_answers(trained_store: ModelStore, name: str) -> None:
    from training.onnx_export import generated_rows

    model = _model(trained_store, name)
    manifest = trained_store.manifest(name, 1)
    rows = generated_rows(manifest.features, 200, seed=3)
    X = rows if manifest.input_format == "dataframe" else rows.to_numpy(dtype=np.float64)
    alone, none, indexed = model.predict_indexed(X, want_probabilities=False)
    with_proba, probabilities, indexed_too = model.predict_indexed(X, want_probabilities=True)
    assert indexed == indexed_too
    assert np.array_equal(alone, with_proba)
    # Probabilities come along unasked only when the labels are their argmax (forests).
    assert (none is None) != model._argmax_labels
    if manifest.task == "classification":
        assert probabilities is not None
        assert probabilities.shape == (200, len(manifest.target.classes or []))


def test_a_graph_that_needs_every_node_is_not_copied(trained_store: ModelStore) -> None:
    forest = _model(trained_store, "breast_cancer")  # one tree op gives labels and scores
    assert list(forest._sessions) == ["both"]
    path = trained_store.onnx_path(trained_store.manifest("breast_cancer", 1))
    assert path is not None
    graph = onnx.load_from_string(path.read_bytes())
    assert _pruned(graph.SerializeToString(), [o.name for o in graph.graph.output]) is None


def test_loading_prints_no_runtime_warning(
    trained_store: ModelStore, capfd: pytest.CaptureFixture[str]
) -> None:
    # Pruned graphs keep no initializer they do not use: ONNX Runtime warns about each one
    # on stderr (in every worker, at every load) otherwise.
    for name in ("iris", "churn", "diabetes", "breast_cancer"):
        _model(trained_store, name)
    assert capfd.readouterr().err == ""
