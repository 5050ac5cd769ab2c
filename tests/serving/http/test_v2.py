"""The Open Inference Protocol on the live server, driven by the real Triton HTTP client
(``tritonclient.http``) and, for what that client cannot send, by raw HTTP. Answers are
compared with the same model version predicting in this process, on the same runtime."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from serving.core.dataplane import RowEncoder
from serving.execution.runtime import LoadedModel, RuntimePolicy, load
from serving.store import ModelStore
from tests.serving.conftest import RunningServer
from tests.serving.http.triton import release

CHURN_CSV = Path(__file__).resolve().parents[3] / "training" / "data" / "churn.csv"


@pytest.fixture(scope="module")
def triton_client(server: RunningServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(urlsplit(server.url).netloc, network_timeout=60)
    yield client
    release(client)


def _local(store: ModelStore, name: str, runtime: str) -> LoadedModel:
    """The served version of ``name`` loaded here, on the runtime the server uses."""
    version = store.production(name) or store.versions(name)[-1]
    model = load(store, name, version, RuntimePolicy(prefer_onnx=runtime == "onnx"))
    assert model.runtime == runtime
    return model


def _text(labels: np.ndarray[Any, Any]) -> list[str]:
    """BYTES labels as text (the client gives bytes for binary outputs, str for JSON ones)."""
    return [x.decode() if isinstance(x, bytes) else x for x in labels.tolist()]


def _runtime(client: httpx.Client, name: str) -> str:
    runtime: str = client.get(f"/models/{name}").json()["runtime"]
    return runtime


def test_server_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("iris")
    assert triton_client.is_model_ready("iris", "1")
    assert not triton_client.is_model_ready("nope")
    assert not triton_client.is_model_ready("iris", "9")
    meta = triton_client.get_server_metadata()
    assert meta["name"] == "servewell"
    assert "binary_tensor_data" in meta["extensions"]
    assert "model_repository" not in meta["extensions"]  # no admin token on this server


def test_model_metadata_numeric_and_mixed(
    triton_client: triton.InferenceServerClient, client: httpx.Client, trained_store: ModelStore
) -> None:
    iris = triton_client.get_model_metadata("iris")
    manifest = trained_store.manifest("iris", 1)
    assert iris["name"] == "iris"
    assert iris["versions"] == ["1"]
    assert (
        iris["platform"]
        == {"onnx": "onnxruntime_onnx", "sklearn": "sklearn"}[_runtime(client, "iris")]
    )
    assert iris["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert iris["outputs"] == [
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        # Asked for by name only (tests/serving/http/test_explain.py).
        {"name": "explanation", "datatype": "FP64", "shape": [-1, 5]},
        {"name": "explanation_all", "datatype": "FP64", "shape": [-1, 3, 5]},
    ]
    assert iris["parameters"]["classes"] == manifest.target.classes
    assert iris["parameters"]["feature_names"] == manifest.feature_names
    assert triton_client.get_model_metadata("iris", "1") == iris

    churn = triton_client.get_model_metadata("churn")
    kinds = {i["name"]: i["datatype"] for i in churn["inputs"]}
    assert kinds == {
        "tenure_months": "INT64",
        "monthly_charges": "FP64",
        "support_calls": "INT64",
        "senior_citizen": "BOOL",
        "contract": "BYTES",
        "internet_service": "BYTES",
        "payment_method": "BYTES",
    }
    assert all(i["shape"] == [-1] for i in churn["inputs"])

    diabetes = triton_client.get_model_metadata("diabetes")
    assert diabetes["outputs"] == [
        {"name": "predict", "datatype": "FP64", "shape": [-1]},
        {"name": "explanation", "datatype": "FP64", "shape": [-1, 11]},
        {"name": "explanation_all", "datatype": "FP64", "shape": [-1, 1, 11]},
    ]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("outputs", [None, ["predict"], ["predict_proba"]])
def test_infer_numeric_model_matches_in_process(
    triton_client: triton.InferenceServerClient,
    client: httpx.Client,
    trained_store: ModelStore,
    binary: bool,
    outputs: list[str] | None,
) -> None:
    rng = np.random.default_rng(7)
    rows = rng.uniform(0, 30, size=(25, 30))
    tensor = triton.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    requested = (
        None
        if outputs is None
        else [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    )
    result = triton_client.infer("breast_cancer", [tensor], outputs=requested, request_id="r-7")
    response = result.get_response()
    assert response["id"] == "r-7"
    assert response["model_name"] == "breast_cancer"
    local = _local(trained_store, "breast_cancer", _runtime(client, "breast_cancer"))
    expected = local.predict(rows, want_probabilities=True)
    names = [o["name"] for o in response["outputs"]]
    assert names == (outputs or ["predict", "predict_proba"])
    if "predict" in names:
        labels = result.as_numpy("predict")
        assert labels.shape == (25,)
        assert _text(labels) == [str(x) for x in expected.predictions.tolist()]
    if "predict_proba" in names:
        proba = result.as_numpy("predict_proba")
        assert proba.dtype == np.float64
        assert expected.probabilities is not None
        np.testing.assert_allclose(proba, expected.probabilities, rtol=1e-6, atol=1e-9)


def _churn_rows(n: int) -> list[dict[str, str]]:
    with CHURN_CSV.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))[:n]


def _churn_inputs(records: list[dict[str, str]], binary: bool) -> list[triton.InferInput]:
    def column(name: str, dtype: Any) -> np.ndarray[Any, Any]:
        values = [r[name] for r in records]
        if dtype is bool:
            return np.array([v == "True" for v in values])
        return np.array(values, dtype=dtype)

    spec = {
        "tenure_months": (np.int64, "INT64"),
        "monthly_charges": (np.float32, "FP32"),
        "support_calls": (np.int32, "INT32"),
        "senior_citizen": (bool, "BOOL"),
        "contract": (object, "BYTES"),
        "internet_service": (object, "BYTES"),
        "payment_method": (object, "BYTES"),
    }
    inputs = []
    for name, (dtype, datatype) in spec.items():
        data = column(name, dtype)
        if dtype is object:
            data = np.array([v.encode() for v in data], dtype=object)
        tensor = triton.InferInput(name, [len(records)], datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs


# 600 binary rows: large BYTES tensors are split by pattern matching, small ones walked.
@pytest.mark.parametrize(("binary", "rows"), [(True, 40), (False, 40), (True, 600)])
def test_infer_mixed_model_per_feature_tensors(
    triton_client: triton.InferenceServerClient,
    client: httpx.Client,
    trained_store: ModelStore,
    binary: bool,
    rows: int,
) -> None:
    records = _churn_rows(rows)
    assert len(records) == rows
    result = triton_client.infer(
        "churn",
        _churn_inputs(records, binary),
        outputs=[
            triton.InferRequestedOutput("predict", binary_data=binary),
            triton.InferRequestedOutput("predict_proba", binary_data=binary),
        ],
    )
    manifest = trained_store.manifest("churn", 1)
    typed = [
        [
            (r[f.name] == "True")
            if f.kind == "boolean"
            else int(r[f.name])
            if f.kind == "integer"
            else float(r[f.name])
            if f.kind == "numeric"
            else r[f.name]
            for f in manifest.features
        ]
        for r in records
    ]
    encoded = RowEncoder(manifest).rows(typed)
    # FP32 on the wire: the same rounding as the client applied.
    column = manifest.feature_names.index("monthly_charges")
    encoded[:, column] = encoded[:, column].astype(np.float32)
    expected = _local(trained_store, "churn", _runtime(client, "churn")).predict(encoded, True)
    labels = _text(result.as_numpy("predict"))
    assert labels == [str(x) for x in expected.predictions.tolist()]
    assert expected.probabilities is not None
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected.probabilities, rtol=1e-6)


def test_infer_regressor_and_versioned_path(
    triton_client: triton.InferenceServerClient, client: httpx.Client, trained_store: ModelStore
) -> None:
    rows = np.linspace(-0.1, 0.1, 30, dtype=np.float32).reshape(3, 10)
    tensor = triton.InferInput("input", [3, 10], "FP32")
    tensor.set_data_from_numpy(rows)
    result = triton_client.infer("diabetes", [tensor], model_version="1")
    assert result.get_response()["model_version"] == "1"
    got = result.as_numpy("predict")
    expected = _local(trained_store, "diabetes", _runtime(client, "diabetes")).predict(
        rows.astype(np.float64), False
    )
    np.testing.assert_allclose(got, expected.predictions, rtol=1e-9)
    # The same request as plain JSON gives the same numbers.
    body = {
        "inputs": [{"name": "input", "shape": [3, 10], "datatype": "FP32", "data": rows.tolist()}]
    }
    plain = client.post("/v2/models/diabetes/versions/1/infer", content=orjson.dumps(body))
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    np.testing.assert_allclose(plain.json()["outputs"][0]["data"], got, rtol=1e-12)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    message: str = body["error"]
    return message


def _iris_body(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
    tensor.update(changes)
    return {"inputs": [tensor]}


def test_error_paths_give_4xx_with_the_protocol_body(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    def post(body: Any, path: str = "/v2/models/iris/infer", **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return client.post(path, content=content, **kwargs)

    assert "nope" in _error(post(_iris_body(), "/v2/models/nope/infer"), 404)
    assert "version" in _error(post(_iris_body(), "/v2/models/iris/versions/7/infer"), 404)
    assert _error(post(_iris_body(), "/v2/models/iris/versions/01/infer"), 400)
    assert "[rows, 4]" in _error(post(_iris_body(shape=[2, 2])), 400)
    assert "needs 4" in _error(post(_iris_body(shape=[1, 4], data=[1.0, 2.0])), 400)
    assert "BYTES" in _error(post(_iris_body(datatype="BYTES", data=["a"] * 4)), 400)
    # A datatype that is not even a string (it once made a lookup fail with a 500).
    assert "is not one of" in _error(post(_iris_body(datatype=["FP64"])), 400)
    assert "is not one of" in _error(post(_iris_body(datatype={"type": "FP64"})), 400)
    # Non-finite values: JSON has none (NaN is not JSON), binary tensors can carry them.
    assert "not valid JSON" in _error(
        post(b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP64","data":[1,2,3,NaN]}]}'),
        400,
    )
    for bad in (np.nan, np.inf):
        values = np.array([[5.1, 3.5, 1.4, 0.2], [5.1, bad, 1.4, 0.2]])
        tensor = {"name": "input", "shape": [2, 4], "datatype": "FP64"}
        head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 64}}]})
        lengths = {"Inference-Header-Content-Length": str(len(head))}
        message = _error(post(head + values.tobytes(), headers=lengths), 400)
        assert "row 1" in message
        assert "not a finite number" in message
    missing = {
        "inputs": [{"name": "tenure_months", "shape": [1], "datatype": "INT64", "data": [1]}]
    }
    assert "missing input(s): monthly_charges" in _error(
        post(missing, "/v2/models/churn/infer"), 400
    )
    assert "unknown input(s) 'petals'" in _error(post(_iris_body(name="petals")), 400)
    unknown_out = {**_iris_body(), "outputs": [{"name": "predict_log_proba"}]}
    assert "unknown output 'predict_log_proba'" in _error(post(unknown_out), 400)
    assert "not valid JSON" in _error(post(b"{"), 400)
    # Binary framing: a header longer than the body, and one that is not a number.
    framed = orjson.dumps(_iris_body())
    header = {"Inference-Header-Content-Length": str(len(framed) + 10)}
    assert "Inference-Header-Content-Length" in _error(post(framed, headers=header), 400)
    header = {"Inference-Header-Content-Length": "ten"}
    assert "byte count" in _error(post(framed, headers=header), 400)
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP64"}
    head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 24}}]})
    body = head + np.zeros(3).tobytes()
    header = {"Inference-Header-Content-Length": str(len(head))}
    assert "need 32" in _error(post(body, headers=header), 400)
    # A categorical value outside the training categories.
    inputs = _churn_inputs(_churn_rows(1), binary=False)
    doc = {"inputs": [i._get_tensor() for i in inputs]}
    doc["inputs"][4]["data"] = ["decade-long"]
    assert "'decade-long' is not a category of contract" in _error(
        post(doc, "/v2/models/churn/infer"), 400
    )
    # Booleans must be BOOL; integers must be INT*.
    doc = {"inputs": [i._get_tensor() for i in inputs]}
    doc["inputs"][3].update(datatype="INT64", data=[1])
    assert "boolean feature takes BOOL" in _error(post(doc, "/v2/models/churn/infer"), 400)
    # Too many rows.
    big = _iris_body(shape=[10_001, 4], data=[1.0] * 40_004)
    assert "at most 10000" in _error(post(big), 400)
    # Unknown /v2 paths and wrong methods speak the protocol's shape too.
    assert _error(client.get("/v2/nothing"), 404)
    assert _error(client.get("/v2/models/iris/infer"), 405)
    assert _error(client.get("/v2/models/nope"), 404)
    assert _error(client.post("/v2/repository/index"), 404)  # no admin token configured
    # The real client surfaces the message as an exception.
    tensor_in = triton.InferInput("input", [1, 3], "FP64")
    tensor_in.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(InferenceServerException, match=r"\[rows, 4\]"):
        triton_client.infer("iris", [tensor_in])
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        triton_client.get_model_metadata("nope")
