"""A model's inputs and outputs as Open Inference Protocol tensors: both input forms, the
datatypes each feature kind takes, and the checks on values (whole numbers, 0/1, NaN only
where nullable, never infinity), without a server."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import numpy as np
import orjson
import pytest

from serving.codecs.oip.signature import Signature
from serving.codecs.oip.tensors import RequestedOutput, Tensor, parse_request
from serving.core.errors import InvalidInputError, MalformedRequestError
from serving.execution.runtime import Prediction
from serving.store import FeatureKind, Manifest, ModelStore


@pytest.fixture(scope="module")
def churn(trained_store: ModelStore) -> Manifest:
    return trained_store.manifest("churn", 1)


@pytest.fixture(scope="module")
def numeric_churn(churn: Manifest) -> Manifest:
    """churn without its categorical features: integer, numeric and boolean ones only."""
    features = [f for f in churn.features if f.kind != FeatureKind.CATEGORICAL]
    return churn.model_copy(update={"features": features})


def _tensors(inputs: list[dict[str, object]]) -> list[Tensor]:
    return parse_request(orjson.dumps({"inputs": inputs}), None).inputs


def _matrix(rows: list[list[float]], datatype: str = "FP64") -> list[Tensor]:
    shape = [len(rows), len(rows[0])]
    return _tensors([{"name": "input", "shape": shape, "datatype": datatype, "data": rows}])


def test_matrix_form_checks_whole_numbers_and_booleans(numeric_churn: Manifest) -> None:
    signature = Signature(numeric_churn, "sklearn", 100)
    names = numeric_churn.feature_names
    assert names == ["tenure_months", "monthly_charges", "support_calls", "senior_citizen"]
    good = signature.rows(_matrix([[12, 70.5, 2, 1], [3, 20.0, 0, 0]]))
    np.testing.assert_array_equal(good, [[12, 70.5, 2, 1], [3, 20.0, 0, 0]])
    with pytest.raises(InvalidInputError, match=r"row 1, support_calls: 2.5 is not a whole"):
        signature.rows(_matrix([[12, 70.5, 2, 1], [3, 20.0, 2.5, 0]]))
    with pytest.raises(InvalidInputError, match=r"row 0, senior_citizen: 2.0 is not 0 or 1"):
        signature.rows(_matrix([[12, 70.5, 2, 2]]))
    with pytest.raises(InvalidInputError, match=r"shape must be \[rows, 4\]"):
        signature.rows(_matrix([[12, 70.5, 2]]))
    with pytest.raises(InvalidInputError, match="numeric datatype"):
        signature.rows(
            _tensors([{"name": "input", "shape": [1, 4], "datatype": "BOOL", "data": [[True] * 4]}])
        )


def test_nan_only_for_nullable_features(numeric_churn: Manifest) -> None:
    row = np.array([[12, np.nan, 2, 1]])
    tensor = Tensor("input", "FP64", (1, 4), row.reshape(-1), 0)
    with pytest.raises(InvalidInputError, match="monthly_charges: nan is not a finite number"):
        Signature(numeric_churn, "sklearn", 100).rows([tensor])
    features = [
        f.model_copy(update={"nullable": f.name == "monthly_charges"})
        for f in numeric_churn.features
    ]
    nullable = Signature(numeric_churn.model_copy(update={"features": features}), "sklearn", 100)
    assert np.isnan(nullable.rows([tensor])[0, 1])
    infinite = Tensor("input", "FP64", (1, 4), np.array([12, np.inf, 2, 1.0]), 0)
    with pytest.raises(InvalidInputError, match="inf is not a finite number"):
        nullable.rows([infinite])


def test_per_feature_form_of_a_mixed_model(churn: Manifest) -> None:
    signature = Signature(churn, "sklearn", 100)
    assert not signature.matrix_ok
    inputs: list[dict[str, object]] = [
        {"name": "tenure_months", "shape": [2], "datatype": "INT32", "data": [12, 3]},
        {"name": "monthly_charges", "shape": [2, 1], "datatype": "FP32", "data": [[70.5], [20]]},
        {"name": "support_calls", "shape": [2], "datatype": "UINT8", "data": [2, 0]},
        {"name": "senior_citizen", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        {"name": "contract", "shape": [2], "datatype": "BYTES", "data": ["one-year", "two-year"]},
        {"name": "internet_service", "shape": [2], "datatype": "BYTES", "data": ["dsl", "dsl"]},
        {
            "name": "payment_method",
            "shape": [2],
            "datatype": "BYTES",
            "data": ["electronic-check"] * 2,
        },
    ]
    rows = signature.rows(_tensors(inputs[::-1]))  # order of tensors does not matter
    contract = churn.features[churn.feature_names.index("contract")].categories or []
    assert rows[:, churn.feature_names.index("contract")].tolist() == [
        contract.index("one-year"),
        contract.index("two-year"),
    ]
    assert rows[:, 0].tolist() == [12, 3]

    def refused(index: int, **change: object) -> str:
        changed = [dict(t) for t in inputs]
        changed[index].update(change)
        with pytest.raises(InvalidInputError) as info:
            signature.rows(_tensors(changed))
        return info.value.message

    assert "integer feature takes INT" in refused(0, datatype="FP64", data=[12.0, 3.0])
    assert "has 3 rows" in refused(2, shape=[3], data=[1, 2, 3])
    assert "[rows] or [rows, 1]" in refused(1, shape=[1, 2], data=[[1.0, 2.0]])
    assert "categorical feature takes BYTES" in refused(5, datatype="INT64", data=[1, 2])
    assert "'fibre' is not a category" in refused(5, data=["fibre", "dsl"])
    assert "no rows" in refused(0, shape=[0], data=[])
    with pytest.raises(InvalidInputError, match="categorical features; send one input per feature"):
        signature.rows(_matrix([[1.0] * 7]))
    with pytest.raises(InvalidInputError, match="given more than once"):
        signature.rows(_tensors([*inputs, inputs[0]]))


def test_outputs_of_a_regressor(trained_store: ModelStore) -> None:
    signature = Signature(trained_store.manifest("diabetes", 1), "onnxruntime_onnx", 100)
    assert signature.outputs == ["predict"]
    with pytest.raises(InvalidInputError, match="unknown output 'predict_proba'"):
        signature.wanted([RequestedOutput("predict_proba", None)])
    (out,) = signature.output_tensors(
        Prediction(np.array([1.5, 2.5]), None), signature.wanted(None), binary_default=True
    )
    assert (out.name, out.datatype, out.shape, out.binary) == ("predict", "FP64", (2,), True)
    meta = signature.metadata([1])
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 10]}]
    assert "classes" not in meta["parameters"]


@pytest.mark.parametrize(
    ("classes", "datatype", "labels"),
    [
        ([False, True], "BOOL", [True, False]),
        ([0, 1], "INT64", [1, 0]),
        ([0.5, 1.5], "FP64", [1.5, 0.5]),
        (["no", "yes"], "BYTES", ["yes", "no"]),
    ],
)
def test_label_datatype_follows_the_classes(
    churn: Manifest, classes: list[object], datatype: str, labels: list[object]
) -> None:
    target = churn.target.model_copy(update={"classes": classes})
    signature = Signature(churn.model_copy(update={"target": target}), "sklearn", 100)
    assert signature.metadata([1])["outputs"][0]["datatype"] == datatype
    proba = np.array([[0.2, 0.8], [0.9, 0.1]])
    predict, probabilities = signature.output_tensors(
        Prediction(np.array(labels, dtype=object), proba), signature.wanted(None), False
    )
    assert predict.datatype == datatype
    assert predict.values.tolist() == labels
    assert [type(v) for v in predict.values.tolist()] == [type(v) for v in labels]
    assert probabilities.values is proba


_JSON_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    2,
    3.5,
    1e308,
    2**64,
    "",
    "input",
    "FP64",
    "BYTES",
    "BOOL",
    "INT8",
    [],
    [1],
    [1, 4],
    [[1]],
    {},
    ["FP64"],
    [None],
    ["a"],
    {"binary_data_size": 4},
    {"binary_data": True},
    {"classification": 2},
]


def _places(value: object, at: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Every path into a JSON document."""
    out = [at]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _places(item, (*at, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _places(item, (*at, i))
    return out


def _changed(document: dict[str, Any], rng: random.Random) -> object:
    """``document`` with one to three values somewhere replaced by other JSON values."""
    changed: object = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_places(changed))
        value = copy.deepcopy(rng.choice(_JSON_VALUES))
        if not path:
            changed = value
            continue
        parent: Any = changed
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    return changed


def test_any_json_request_is_read_or_refused_with_a_domain_error(
    trained_store: ModelStore, churn: Manifest
) -> None:
    # Whatever a client sends must end in a 4xx (a domain error), never in an exception the
    # service would answer with 500: a non-string datatype once did.
    signatures = [Signature(trained_store.manifest("iris", 1), "sklearn", 100)]
    signatures.append(Signature(churn, "sklearn", 100))
    iris_doc: dict[str, Any] = {
        "id": "r",
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [[5, 3, 1, 0]]}],
        "outputs": [{"name": "predict"}],
        "parameters": {},
    }
    churn_doc: dict[str, Any] = {
        "inputs": [
            {"name": "tenure_months", "shape": [1], "datatype": "INT64", "data": [1]},
            {"name": "contract", "shape": [1], "datatype": "BYTES", "data": ["month-to-month"]},
        ]
    }
    rng = random.Random(7)
    for _ in range(3000):
        body = json.dumps(_changed(rng.choice([iris_doc, churn_doc]), rng)).encode()
        for signature in signatures:
            try:
                request = parse_request(body, None)
                signature.wanted(request.outputs)
                signature.rows(request.inputs)
            except (InvalidInputError, MalformedRequestError):
                pass
