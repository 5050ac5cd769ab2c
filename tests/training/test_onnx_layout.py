"""The column-layout pass: the same answers from a graph ONNX Runtime runs faster."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from training.onnx_layout import transpose_linear_chains


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _converted(pipeline: Any, width: int) -> onnx.ModelProto:
    final = pipeline[-1]
    options = {id(final): {"zipmap": False}} if hasattr(final, "classes_") else None
    initial = [("X", DoubleTensorType([None, width]))]
    model: onnx.ModelProto = convert_sklearn(pipeline, initial_types=initial, options=options)
    return model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _same_answers(before: onnx.ModelProto, after: onnx.ModelProto, X: np.ndarray) -> None:
    old, new = _session(before).run(None, {"X": X}), _session(after).run(None, {"X": X})
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    for a, b in zip(old, new, strict=True):
        assert a.shape == b.shape
        if a.dtype.kind == "f":
            # Elementwise nodes compute the same numbers; only MatMul's summation may round
            # its last bit differently.
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-13)
        else:
            assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("pipeline", "data"),
    [
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), load_iris),
        (make_pipeline(StandardScaler(), Ridge(alpha=0.5)), load_diabetes),
        (make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000)), load_iris),
    ],
    ids=["scaled-logistic", "scaled-ridge", "minmax-logistic"],
)
def test_scaled_linear_models_run_on_columns_with_the_same_answers(
    pipeline: Any, data: Any
) -> None:
    X, y = data(return_X_y=True)
    pipeline.fit(X, y)
    before = _converted(pipeline, X.shape[1])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert transpose_linear_chains(after)
    onnx.checker.check_model(after)
    ops = _ops(after)
    assert ops.count("Transpose") == 2
    # Every broadcast constant now runs along rows of the transposed input.
    first, last = ops.index("Transpose"), len(ops) - 1 - ops[::-1].index("Transpose")
    assert "MatMul" in ops[first:last]
    assert not {"Sub", "Div", "Mul", "Add"} & set(ops[:first])
    rng = np.random.default_rng(0)
    wide = rng.uniform(X.min(axis=0) - 1, X.max(axis=0) + 1, size=(5_000, X.shape[1]))
    for rows in (X, wide, wide[:1]):
        _same_answers(before, after, rows)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_one_layers_intercept_is_not_taken_again_as_the_next_layers_step() -> None:
    # A linear network: MatMul, Add (intercept), MatMul, Add. The first Add is the first
    # chain's intercept and also looks like an elementwise step of the second chain: taken
    # twice, the graph read a tensor the first rewrite had removed (ONNX Runtime refused it).
    X, y = load_diabetes(return_X_y=True)
    network = MLPRegressor(hidden_layer_sizes=(4,), activation="identity", max_iter=50)
    pipeline = make_pipeline(StandardScaler(), network).fit(X, y)
    before = _converted(pipeline, X.shape[1])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert transpose_linear_chains(after)
    onnx.checker.check_model(after, full_check=True)
    _same_answers(before, after, X)


def test_a_forest_graph_is_left_alone() -> None:
    X, y = load_iris(return_X_y=True)
    forest = make_pipeline(RandomForestClassifier(n_estimators=3, random_state=0)).fit(X, y)
    model = _converted(forest, 4)
    before = model.SerializeToString()
    assert not transpose_linear_chains(model)
    assert model.SerializeToString() == before


def _graph(nodes: list[Any], outputs: list[str], initializers: dict[str, Any]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 3])],
        [helper.make_tensor_value_info(o, TensorProto.DOUBLE, None) for o in outputs],
        [
            numpy_helper.from_array(np.asarray(v, dtype=np.float64), k)
            for k, v in initializers.items()
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CONSTANTS = {
    "c": [1.5, -2.0, 0.25],
    "s": [[2.0, 4.0, 8.0]],
    "w": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
    "b": [0.5, -0.5],
}


def test_a_constant_on_the_left_and_other_elementwise_ops_keep_their_order() -> None:
    nodes = [
        helper.make_node("Sub", ["c", "X"], ["a"]),  # c - X: not X - c
        helper.make_node("Mul", ["s", "a"], ["m"]),
        helper.make_node("MatMul", ["m", "w"], ["p"]),
        helper.make_node("Add", ["b", "p"], ["y"]),
    ]
    before = _graph(nodes, ["y"], CONSTANTS)
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert transpose_linear_chains(after)
    assert _ops(after) == ["Transpose", "Sub", "Mul", "MatMul", "Add", "Transpose"]
    X = np.random.default_rng(1).normal(size=(257, 3))
    _same_answers(before, after, X)
    expected = (np.asarray(CONSTANTS["s"]) * (np.asarray(CONSTANTS["c"]) - X)) @ np.asarray(
        CONSTANTS["w"]
    ) + np.asarray(CONSTANTS["b"])
    np.testing.assert_allclose(_session(after).run(None, {"X": X})[0], expected, rtol=1e-13)


def test_a_tensor_read_elsewhere_ends_the_chain() -> None:
    # "a" is also a graph output: the Sub producing it must stay as it is.
    nodes = [
        helper.make_node("Sub", ["X", "c"], ["a"]),
        helper.make_node("Div", ["a", "s"], ["d"]),
        helper.make_node("MatMul", ["d", "w"], ["y"]),
    ]
    before = _graph(nodes, ["y", "a"], CONSTANTS)
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert transpose_linear_chains(after)
    assert _ops(after) == ["Sub", "Transpose", "Div", "MatMul", "Transpose"]
    _same_answers(before, after, np.random.default_rng(2).normal(size=(100, 3)))
