"""The plain JSON lane of the Open Inference Protocol reads exactly what the general path
reads, or declines: same rows, same outputs, for every request it accepts."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import orjson
import pytest

from serving.codecs.oip.plain import read_plain
from serving.codecs.oip.signature import Signature
from serving.codecs.oip.tensors import parse_request
from serving.core.errors import InvalidInputError, MalformedRequestError
from serving.store import FeatureKind, Manifest, ModelStore

ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def iris(trained_store: ModelStore) -> Signature:
    return Signature(trained_store.manifest("iris", 1), "onnxruntime_onnx", 100)


@pytest.fixture(scope="module")
def numeric_churn(trained_store: ModelStore) -> Signature:
    """churn without its categorical features: integer and boolean features in the matrix."""
    churn = trained_store.manifest("churn", 1)
    features = [f for f in churn.features if f.kind != FeatureKind.CATEGORICAL]
    return Signature(churn.model_copy(update={"features": features}), "sklearn", 100)


def _request(data: Any = None, **changes: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": data or [ROW]}
    return {"inputs": [tensor], **changes}


def _general(document: dict[str, Any], signature: Signature) -> tuple[np.ndarray, list[str]]:
    """Rows and output names as the general path reads them (raises what it raises)."""
    request = parse_request(orjson.dumps(document), None)
    wanted = signature.wanted(request.outputs)
    return signature.rows(request.inputs), [o.name for o in wanted]


def _agree(document: dict[str, Any], signature: Signature) -> bool:
    """Whether the lane took the request; when it did, it read what the general path reads."""
    plain = read_plain(orjson.loads(orjson.dumps(document)), signature)
    if plain is None:
        return False
    rows, names = _general(document, signature)
    assert plain.rows.dtype == np.float64
    np.testing.assert_array_equal(plain.rows, rows)
    assert plain.rows.shape == rows.shape
    assert [o.name for o in signature.wanted(plain.outputs)] == names
    assert plain.id == document.get("id")
    return True


@pytest.mark.parametrize(
    "document",
    [
        _request(),
        _request(ROW),  # flat data
        _request([[5, 3, 1, 0]]),  # JSON integers for FP64
        _request(id="r-1", outputs=[{"name": "predict"}]),
        _request(outputs=[{"name": "predict_proba"}, {"name": "predict"}]),
        _request(model_name="iris", model_version="1"),
        {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [ROW, ROW]}]},
        {
            "inputs": [
                {"name": "input", "shape": [2, 4], "datatype": "INT64", "data": [[5] * 4] * 2}
            ]
        },
    ],
)
def test_the_usual_requests_take_the_lane_and_read_alike(
    document: dict[str, Any], iris: Signature
) -> None:
    assert _agree(document, iris)


@pytest.mark.parametrize(
    "document",
    [
        _request(parameters={"binary_data_output": True}),
        {"inputs": [{**_request()["inputs"][0], "parameters": {}}]},
        _request([[5.1, 3.5, 1.4]]),  # 3 values for shape [1, 4]
        {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [ROW[:3]]}]},
        {"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP64", "data": []}]},
        {"inputs": [{"name": "input", "shape": [101, 4], "datatype": "FP64", "data": [ROW] * 101}]},
        _request([[5.1, 3.5], [1.4, 0.2]]),  # nested as [2, 2]
        _request([[5.1, "3.5", 1.4, 0.2]]),
        _request([[True, False, True, False]]),
        _request([[5.1, None, 1.4, 0.2]]),
        _request([[5.1, [3.5], 1.4, 0.2]]),
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BOOL", "data": [[1] * 4]}]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": [["a"] * 4]}]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": ["FP64"], "data": [ROW]}]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32", "data": [ROW]}]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "UINT8", "data": [[-1] * 4]}]},
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT8", "data": [[1000] * 4]}]},
        {"inputs": [{"name": "input", "shape": [1.0, 4], "datatype": "FP64", "data": [ROW]}]},
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [ROW]}]},
        _request(outputs=[{"name": "predict"}, {"name": "predict"}]),
        _request(outputs=[{"name": "label"}]),
        _request(outputs=[{"name": "predict", "parameters": {"binary_data": True}}]),
        _request(outputs={"name": "predict"}),
        _request(id=7),
        _request(extra=1),
        {"inputs": [_request()["inputs"][0], _request()["inputs"][0]]},
    ],
)
def test_anything_else_is_left_to_the_general_path(
    document: dict[str, Any], iris: Signature
) -> None:
    assert not _agree(document, iris)


def test_a_model_with_integer_and_boolean_features_is_checked_as_the_general_path_does(
    numeric_churn: Signature,
) -> None:
    good = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [12, 70.5, 2, 1]}]
    }
    assert _agree(good, numeric_churn)
    for bad in ([12.5, 70.5, 2, 1], [12, 70.5, 2, 2]):  # half a month; a boolean of 2
        document = copy.deepcopy(good)
        document["inputs"][0]["data"] = bad
        assert not _agree(document, numeric_churn)
        with pytest.raises(InvalidInputError):
            _general(document, numeric_churn)


def test_a_model_with_categorical_features_never_takes_the_lane(
    trained_store: ModelStore,
) -> None:
    churn: Manifest = trained_store.manifest("churn", 1)
    signature = Signature(churn, "sklearn", 100)
    document = {"inputs": [{"name": "input", "shape": [1, 7], "datatype": "FP64", "data": [1] * 7}]}
    assert read_plain(document, signature) is None


def _mutations(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random change somewhere in a request: a value swapped for another JSON value."""
    mutated = copy.deepcopy(document)
    values: list[Any] = [None, True, 0, -1, 2, 3.5, "", "input", "FP64", [], [1, 4], {}, 1e308]
    values += ["INT8", "UINT16", 300, 70_000]
    paths: list[tuple[Any, Any]] = [(mutated, "inputs"), (mutated["inputs"], 0)]
    tensor = mutated["inputs"][0]
    paths += [(tensor, key) for key in ("name", "shape", "datatype", "data", "parameters")]
    paths += [(tensor["shape"], 0), (tensor["shape"], 1), (tensor["data"], 0)]
    paths += [(tensor["data"][0], i) for i in range(4)]
    paths += [(mutated, "outputs"), (mutated, "id"), (mutated, "parameters")]
    container, key = rng.choice(paths)
    container[key] = rng.choice(values)
    return mutated


def test_random_changes_either_read_alike_or_leave_the_lane(iris: Signature) -> None:
    rng = random.Random(20261202)
    base = _request(outputs=[{"name": "predict"}])
    taken = declined = 0
    for _ in range(600):
        document = _mutations(base, rng)
        try:
            if _agree(document, iris):
                taken += 1
                continue
        except (InvalidInputError, MalformedRequestError) as exc:
            raise AssertionError(
                f"the lane took a request the general path refuses: {exc}"
            ) from exc
        declined += 1
    assert taken > 50
    assert declined > 50


def test_json_numbers_are_finite_so_the_lane_need_not_check_them() -> None:
    # What plain_matrix relies on: orjson refuses what is not a finite double.
    for text in (b"[NaN]", b"[Infinity]", b"[-Infinity]", b"[1e999]", b"[-1e400]"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)
