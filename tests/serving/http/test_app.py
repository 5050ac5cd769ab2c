"""The real service end to end: every endpoint and every error case, over HTTP."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import numpy as np
import pytest

from serving.store import ModelStore
from tests.serving.conftest import RunningServer
from training.onnx_export import PROBA_TOLERANCE

IRIS = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
CHURN = {
    "tenure_months": 49,
    "monthly_charges": 80.61,
    "support_calls": 3,
    "senior_citizen": True,
    "contract": "one-year",
    "internet_service": "fiber",
    "payment_method": "bank-transfer",
}


def _error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == type_
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


def test_iris_records_match_in_process_predict(
    client: httpx.Client, trained_store: ModelStore
) -> None:
    _, model = trained_store.load_model("iris", 1)
    response = client.post(
        "/models/iris/predict", json={"instances": [IRIS], "return_probabilities": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    row = np.array([list(IRIS.values())])
    assert body["model"] == "iris"
    assert body["version"] == 1
    assert body["predictions"] == model.predict(row).tolist()
    expected = dict(zip(model.classes_.tolist(), model.predict_proba(row)[0].tolist(), strict=True))
    # ONNX Runtime serves it: equal to scikit-learn within the parity tolerance.
    assert body["probabilities"] == [pytest.approx(expected, abs=PROBA_TOLERANCE)]


def test_positional_rows_and_versioned_route(
    client: httpx.Client, trained_store: ModelStore
) -> None:
    _, model = trained_store.load_model("breast_cancer", 1)
    manifest = trained_store.manifest("breast_cancer", 1)
    rng = np.random.default_rng(0)
    lows = np.array([f.min for f in manifest.features])
    highs = np.array([f.max for f in manifest.features])
    rows = lows + rng.random((50, len(lows))) * (highs - lows)
    response = client.post("/models/breast_cancer/versions/1/predict", json={"rows": rows.tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model.predict(rows).tolist()
    assert "probabilities" not in response.json()


def test_regressor_predicts_numbers(client: httpx.Client, trained_store: ModelStore) -> None:
    _, model = trained_store.load_model("diabetes", 1)
    rows = np.linspace(-0.1, 0.1, 30).reshape(3, 10)
    response = client.post("/models/diabetes/predict", json={"rows": rows.tolist()})
    assert response.status_code == 200, response.text
    # ONNX Runtime serves it: equal to scikit-learn within the parity tolerance.
    assert response.json()["predictions"] == pytest.approx(model.predict(rows).tolist(), rel=1e-9)


def test_mixed_type_model_takes_records(client: httpx.Client, trained_store: ModelStore) -> None:
    import pandas as pd

    _, model = trained_store.load_model("churn", 1)
    other = {**CHURN, "contract": "month-to-month", "senior_citizen": False, "support_calls": 0}
    response = client.post(
        "/models/churn/predict",
        json={"instances": [CHURN, other], "return_probabilities": True},
    )
    assert response.status_code == 200, response.text
    frame = pd.DataFrame([CHURN, other]).astype(
        {"tenure_months": float, "support_calls": float, "senior_citizen": float}
    )
    body = response.json()
    assert body["predictions"] == model.predict(frame).tolist()
    expected = model.predict_proba(frame)
    got = [[p[str(c)] for c in model.classes_] for p in body["probabilities"]]
    assert np.allclose(np.array(got), expected, rtol=0, atol=PROBA_TOLERANCE)


def test_probabilities_of_a_regressor_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/models/diabetes/predict", json={"rows": [[0.0] * 10], "return_probabilities": True}
    )
    error = _error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["return_probabilities"]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    _error(client.post("/models/nope/predict", json={"rows": [[1]]}), 404, "model_not_found")
    _error(client.get("/models/nope"), 404, "model_not_found")
    _error(
        client.post("/models/nope/versions/1/predict", json={"rows": [[1]]}),
        404,
        "model_not_found",
    )


def test_unknown_version_is_404(client: httpx.Client) -> None:
    response = client.post("/models/iris/versions/99/predict", json={"instances": [IRIS]})
    _error(response, 404, "version_not_found")


def test_validation_error_names_row_and_feature(client: httpx.Client) -> None:
    bad = {**IRIS, "petal_length_cm": "long"}
    response = client.post("/models/iris/predict", json={"instances": [IRIS, IRIS, IRIS, bad]})
    error = _error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["instances", 3, "petal_length_cm"]


def test_typo_in_feature_name_is_rejected(client: httpx.Client) -> None:
    typo = dict(IRIS)
    typo["petal_lenght_cm"] = typo.pop("petal_length_cm")
    error = _error(
        client.post("/models/iris/predict", json={"instances": [typo]}), 422, "validation_error"
    )
    locs = [d["loc"] for d in error["details"]]
    assert ["instances", 0, "petal_lenght_cm"] in locs
    assert ["instances", 0, "petal_length_cm"] in locs


def test_kinds_are_strict(client: httpx.Client) -> None:
    cases = [
        ("tenure_months", 1.5),  # integer feature
        ("senior_citizen", 1),  # boolean feature: JSON true/false only
        ("contract", "weekly"),  # not a training category
        ("monthly_charges", "80"),  # number given as a string
    ]
    for field, value in cases:
        response = client.post(
            "/models/churn/predict", json={"instances": [{**CHURN, field: value}]}
        )
        error = _error(response, 422, "validation_error")
        assert error["details"][0]["loc"] == ["instances", 0, field], field


def test_nan_and_infinity_are_422(client: httpx.Client) -> None:
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = '{"rows": [[5.1, 3.5, ' + literal + ", 0.2]]}"
        response = client.post(
            "/models/iris/predict", content=body, headers={"content-type": "application/json"}
        )
        error = _error(response, 422, "validation_error")
        assert error["details"][0]["loc"] == ["rows", 0, 2], literal


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post("/models/iris/predict", content=b'{"rows": [[1, 2,')
    error = _error(response, 400, "malformed_json")
    assert "JSON" in error["message"]


def test_row_count_limits(client: httpx.Client) -> None:
    _error(client.post("/models/iris/predict", json={"rows": []}), 422, "validation_error")
    _error(client.post("/models/iris/predict", json={}), 422, "validation_error")
    both = {"rows": [list(IRIS.values())], "instances": [IRIS]}
    _error(client.post("/models/iris/predict", json=both), 422, "validation_error")
    wrong_width = {"rows": [[1.0, 2.0, 3.0]]}
    _error(client.post("/models/iris/predict", json=wrong_width), 422, "validation_error")


def test_body_over_limit_is_413(server: RunningServer, client: httpx.Client) -> None:
    limit = server.app.state.settings.max_body_bytes
    big = b'{"rows": [' + b"[1.0, 2.0, 3.0, 4.0]," * (limit // 20) + b"[1, 2, 3, 4]]}"
    _error(client.post("/models/iris/predict", content=big), 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(big), 1 << 16):
            yield big[start : start + (1 << 16)]

    response = client.post("/models/iris/predict", content=chunks())
    assert "content-length" not in response.request.headers
    _error(response, 413, "payload_too_large")


def test_large_positional_request(client: httpx.Client, trained_store: ModelStore) -> None:
    _, model = trained_store.load_model("iris", 1)
    rows = np.random.default_rng(1).uniform(0.1, 7.9, size=(10_000, 4))
    response = client.post("/models/iris/predict", json={"rows": rows.tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model.predict(rows).tolist()


def test_wrong_method_is_json_405(client: httpx.Client) -> None:
    _error(client.get("/models/iris/predict"), 405, "method_not_allowed")


def test_models_listing(client: httpx.Client) -> None:
    body = client.get("/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"iris", "breast_cancer", "diabetes", "churn"}
    iris = by_name["iris"]["versions"][0]
    assert iris["task"] == "classification"
    assert iris["state"] == "ready"
    assert "f1_macro" in iris["metrics"]
    assert [f["name"] for f in iris["features"]] == list(IRIS)
    assert iris["classes"] == ["setosa", "versicolor", "virginica"]


def test_model_detail(client: httpx.Client, trained_store: ModelStore) -> None:
    body = client.get("/models/churn").json()
    manifest = trained_store.manifest("churn", 1)
    assert body["version"] == 1
    assert body["data_fingerprint"] == manifest.data_fingerprint
    assert body["metrics"] == manifest.metrics
    assert body["created"]
    contract = next(f for f in body["features"] if f["name"] == "contract")
    assert contract["categories"] == ["month-to-month", "one-year", "two-year"]


def test_health(client: httpx.Client) -> None:
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["models"]["iris"]["1"]["state"] == "ready"
    assert client.head("/health/live").status_code == 200
    assert client.head("/health/ready").status_code == 200


def test_openapi_has_one_typed_operation_per_model(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for name in ("iris", "breast_cancer", "diabetes", "churn"):
        operation = schema["paths"][f"/models/{name}/predict"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in schema["components"]["schemas"]
    components = schema["components"]["schemas"]
    churn = components["ChurnV1Instance"]
    assert churn["additionalProperties"] is False
    assert churn["properties"]["contract"]["enum"] == ["month-to-month", "one-year", "two-year"]
    assert churn["properties"]["tenure_months"]["type"] == "integer"
    assert churn["properties"]["senior_citizen"]["type"] == "boolean"
    iris = components["IrisV1Instance"]["properties"]["petal_length_cm"]
    assert "training range" in iris["description"]
    assert iris["examples"]
    assert "PredictResponse" in components


def test_not_ready_when_a_model_fails_verification(tampered_server: RunningServer) -> None:
    with tampered_server.client() as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        state = ready.json()["models"]
        assert state["diabetes"]["1"]["state"] == "failed"
        assert "IntegrityError" in state["diabetes"]["1"]["error"]
        assert state["iris"]["1"]["state"] == "ready"
        response = client.post("/models/diabetes/predict", json={"rows": [[0.0] * 10]})
        _error(response, 503, "model_unavailable")
        ok = client.post("/models/iris/predict", json={"instances": [IRIS]})
        assert ok.status_code == 200
        assert client.get("/health/live").status_code == 200


def test_every_openapi_reference_resolves(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    text = json.dumps(schema)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs
    assert refs <= set(schema["components"]["schemas"])


def test_trailing_slash_is_a_json_404_not_a_redirect(client: httpx.Client) -> None:
    response = client.get("/models/")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize("version", ["01", "+1", "1.0", "0", "-1", "1e0"])
def test_versions_are_written_one_way(client: httpx.Client, version: str) -> None:
    response = client.post(
        f"/models/iris/versions/{version}/predict", json={"rows": [[1, 2, 3, 4]]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"] == ["path", "version"]


def test_error_bodies_stay_small(client: httpx.Client) -> None:
    rows = [["x", "y", "z", "w"]] * 5000
    response = client.post("/models/iris/predict", json={"rows": rows})
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert len(details) == 51
    assert details[-1]["msg"] == "... and 19950 more problems"
    long_key = "k" * 100_000
    typo = client.post("/models/iris/predict", json={"instances": [{long_key: 1}]})
    assert typo.status_code == 422
    assert len(typo.content) < 5_000


def test_every_prediction_says_which_version_answered(client: httpx.Client) -> None:
    typed = client.post("/models/iris/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
    pinned = client.post("/models/iris/versions/1/predict", json={"rows": [[5.1, 3.5, 1.4, 0.2]]})
    v2 = client.post(
        "/v2/models/iris/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
            ]
        },
    )
    assert typed.headers["x-model-version"] == str(typed.json()["version"]) == "1"
    assert pinned.headers["x-model-version"] == "1"
    assert v2.headers["x-model-version"] == v2.json()["model_version"] == "1"
    refused = client.post("/models/iris/predict", json={"rows": [[1.0]]})
    assert refused.status_code == 422
    assert "x-model-version" not in refused.headers  # no version answered
