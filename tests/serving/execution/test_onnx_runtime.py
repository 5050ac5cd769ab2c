"""The ONNX Runtime model: each kind of call runs a session with only the nodes it needs, and
every kind answers alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

from serving.execution.onnx_graphs import _pruned, prepare
from serving.execution.onnx_runtime import OnnxIO, OnnxModel, ServingGraphs
from serving.store import ModelStore
from tests.serving.process import python_prints


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


@pytest.mark.parametrize("name", ["iris", "churn", "breast_cancer", "diabetes"])
def test_the_graphs_training_prepared_are_the_ones_prepared_at_load(
    trained_store: ModelStore, name: str
) -> None:
    verified = trained_store.read_version(name, 1, onnx=True)
    assert verified.onnx is not None
    prepared = ServingGraphs.of(verified)
    assert prepared is not None
    assert prepared == prepare(verified.onnx, OnnxIO.of(verified.manifest))
    model = OnnxModel(OnnxIO.of(verified.manifest), verified.onnx, prepared=prepared)
    assert model.graphs is prepared


def test_kinds_that_run_one_graph_share_its_file_and_session(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("iris", 1)
    assert manifest.onnx is not None
    assert manifest.onnx.graphs is not None
    # The label exposed as its index changes the whole graph; the labels call is cut from it.
    assert manifest.onnx.graphs.files == {"labels": "onnx/labels.onnx", "both": "onnx/both.onnx"}
    forest = trained_store.manifest("breast_cancer", 1)
    assert forest.onnx is not None
    assert forest.onnx.graphs is not None
    assert forest.onnx.graphs.files == {"both": "onnx/both.onnx"}  # probabilities alone
    diabetes = trained_store.manifest("diabetes", 1)
    assert diabetes.onnx is not None
    assert diabetes.onnx.graphs is not None
    assert diabetes.onnx.graphs.files == {"both": "model.onnx"}  # a regressor's one output
    for m in (manifest, forest, diabetes):
        assert m.onnx is not None
        assert m.onnx.graphs is not None
        assert set(m.onnx.graphs.files.values()) <= set(m.files)  # hashed like every file


def test_graphs_that_do_not_fit_the_signature_are_prepared_anew(
    trained_store: ModelStore,
) -> None:
    verified = trained_store.read_version("iris", 1, onnx=True)
    assert verified.onnx is not None
    prepared = ServingGraphs.of(verified)
    assert prepared is not None
    signature = OnnxIO.of(verified.manifest)
    partial = replace(prepared, graphs={"both": prepared.graphs["both"]})
    model = OnnxModel(signature, verified.onnx, prepared=partial)
    assert model.graphs == prepared


def test_a_worker_serving_prepared_graphs_never_imports_onnx(trained_store: ModelStore) -> None:
    # The onnx package costs 14 MB in each process that imports it; ONNX Runtime alone runs
    # the graphs training prepared.
    script = (
        "import sys\n"
        "from serving.execution.runtime import RuntimePolicy, load\n"
        "from serving.store import ModelStore\n"
        f"store = ModelStore({str(trained_store.root)!r})\n"
        "for name in ('iris', 'churn', 'breast_cancer', 'diabetes'):\n"
        "    assert load(store, name, 1, RuntimePolicy()).runtime == 'onnx'\n"
        "print(sorted(m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')))\n"
    )
    assert python_prints(script) == "[]"
