"""Data capture and feedback through the live server: predictions kept in a real database,
labels joined to them by the application's own request ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.capture.database import open_engine
from serving.capture.records import CapturedRow
from serving.capture.store import CaptureStore
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW, RunningServer, quiet_settings, running_server

IRIS = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]


def _rows(url: str, model: str) -> list[CapturedRow]:
    engine = open_engine(url)
    try:
        return CaptureStore(engine).rows(model)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def capturing(
    trained_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('capture') / 'capture.sqlite'}"
    settings = quiet_settings(
        trained_store,
        pool_size=1,
        capture="iris,diabetes",
        capture_url=url,
        feedback_max_items=5,
        admin_token="adm1n",
    )
    with running_server(settings) as running:
        yield running, url


def _feedback(client: httpx.Client, model: str, items: Any, **kw: Any) -> httpx.Response:
    return client.post(f"/models/{model}/feedback", json=items, **kw)


def test_feedback_needs_capture(client: httpx.Client) -> None:
    response = _feedback(client, "iris", [{"request_id": "x", "label": "setosa"}])
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "capture_off"


def test_labels_join_captured_predictions_by_request_id(
    capturing: tuple[RunningServer, str],
) -> None:
    server, url = capturing
    with server.client() as client:
        typed = client.post(
            "/models/iris/predict",
            json={"rows": [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], "return_probabilities": True},
            headers={"X-Request-ID": "app-typed-1"},
        )
        assert typed.status_code == 200
        v2 = client.post(
            "/v2/models/iris/infer",
            json={
                "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]
            },
            headers={"X-Request-ID": "app-v2-1"},
        )
        assert v2.status_code == 200
        answer = _feedback(
            client,
            "iris",
            [
                {"request_id": "app-typed-1", "row": 0, "label": "setosa"},
                {"request_id": "app-typed-1", "row": 7, "label": "setosa"},
                {"request_id": "app-typed-1", "row": 1, "label": "tulip"},
                {"request_id": "app-v2-1", "label": "versicolor"},
                {"request_id": "app-typed-1", "row": 1, "label": True},
            ],
        )
    assert answer.status_code == 200
    body = answer.json()
    assert (body["joined"], body["unknown"], body["refused"]) == (2, 1, 2)
    statuses = [(i["index"], i["status"]) for i in body["items"]]
    assert statuses == [
        (0, "joined"),
        (1, "unknown"),
        (2, "refused"),
        (3, "joined"),
        (4, "refused"),
    ]
    assert "tulip" in body["items"][2]["reason"]
    assert "setosa" in body["items"][2]["reason"]  # names the classes

    with server.client() as client:
        scrape = client.get("/metrics").text.splitlines()
    written = [line for line in scrape if line.startswith("servewell_capture_rows_total")]
    assert written
    assert float(written[0].split()[1]) >= 3
    rows = {(r.request_id, r.row): r for r in _rows(url, "iris")}
    first = rows[("app-typed-1", 0)]
    assert first.inputs == dict(zip(IRIS, IRIS_ROW, strict=True))
    assert first.prediction == typed.json()["predictions"][0]
    assert first.probabilities == pytest.approx(typed.json()["probabilities"][0])
    assert (first.transport, first.version, first.label) == ("rest", 1, "setosa")
    assert first.latency_ms > 0
    assert rows[("app-typed-1", 1)].label is None
    assert rows[("app-v2-1", 0)].transport == "v2"
    assert rows[("app-v2-1", 0)].label == "versicolor"


def test_a_label_sent_again_replaces_the_first(capturing: tuple[RunningServer, str]) -> None:
    server, url = capturing
    with server.client() as client:
        client.post(
            "/models/iris/predict", json={"rows": [IRIS_ROW]}, headers={"X-Request-ID": "again"}
        )
        for label in ("setosa", "virginica"):
            body = _feedback(client, "iris", [{"request_id": "again", "label": label}]).json()
            assert body["joined"] == 1
    labelled = [r for r in _rows(url, "iris") if r.request_id == "again"]
    assert [r.label for r in labelled] == ["virginica"]


def test_regressors_take_finite_values(capturing: tuple[RunningServer, str]) -> None:
    server, url = capturing
    with server.client() as client:
        client.post(
            "/models/diabetes/predict", json={"rows": [[0.0] * 10]}, headers={"X-Request-ID": "d-1"}
        )
        body = _feedback(
            client,
            "diabetes",
            [{"request_id": "d-1", "value": 151.5}, {"request_id": "d-1", "value": "high"}],
        ).json()
    assert [i["status"] for i in body["items"]] == ["joined", "refused"]
    assert "finite number" in body["items"][1]["reason"]
    assert [r.label for r in _rows(url, "diabetes") if r.request_id == "d-1"] == [151.5]


def test_only_the_listed_models_are_captured(capturing: tuple[RunningServer, str]) -> None:
    server, url = capturing
    with server.client() as client:
        response = client.post(
            "/models/breast_cancer/predict",
            json={"rows": [[1.0] * 30]},
            headers={"X-Request-ID": "b"},
        )
        assert response.status_code == 200
        client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})  # written after it
        server.app.state.dataplane.capture.writer.flush(10)
    assert _rows(url, "breast_cancer") == []


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"[{", 400, "malformed_json"),
        (b"[]", 422, "validation_error"),
        (b'{"request_id": "a"}', 422, "validation_error"),
        (
            b"[" + b",".join([b'{"request_id": "a", "label": "setosa"}'] * 6) + b"]",
            422,
            "validation_error",
        ),
    ],
)
def test_bad_bodies_get_a_clear_4xx(
    capturing: tuple[RunningServer, str], body: bytes, status: int, kind: str
) -> None:
    server, _ = capturing
    with server.client() as client:
        response = client.post(
            "/models/iris/feedback", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] == kind


def test_unknown_models_are_404(capturing: tuple[RunningServer, str]) -> None:
    server, _ = capturing
    with server.client() as client:
        response = _feedback(client, "nope", [{"request_id": "a", "label": 1}])
    assert response.status_code == 404


def test_the_feedback_token_guards_labels(trained_store: ModelStore, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    settings = quiet_settings(
        trained_store, pool_size=1, capture="all", capture_url=url, feedback_token="s3cret"
    )
    items = [{"request_id": "t", "label": "setosa"}]
    with running_server(settings) as server, server.client() as client:
        assert _feedback(client, "iris", items).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert _feedback(client, "iris", items, headers=wrong).status_code == 403
        right = {"Authorization": "Bearer s3cret"}
        assert _feedback(client, "iris", items, headers=right).json()["unknown"] == 1


def test_an_unusable_database_never_fails_a_prediction(
    trained_store: ModelStore, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the database's folder should be")
    settings = quiet_settings(
        trained_store, pool_size=1, capture="all", capture_url=f"sqlite:///{blocked / 'c.sqlite'}"
    )
    with running_server(settings) as server, server.client() as client:
        for _ in range(5):
            response = client.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
            assert response.status_code == 200, response.text
        capture = server.app.state.dataplane.capture
        assert capture.writer.flush(10)
        assert capture.writer.dropped == 5
        scrape = client.get("/metrics").text
        assert "servewell_capture_dropped_total 5.0" in scrape
        assert "servewell_capture_rows_total 0.0" in scrape
        answer = _feedback(client, "iris", [{"request_id": "x", "label": "setosa"}])
        assert answer.status_code == 503
        assert answer.json()["error"]["type"] == "capture_unavailable"
        assert "Retry-After" in answer.headers


def test_the_admin_api_reads_captured_rows(capturing: tuple[RunningServer, str]) -> None:
    server, _ = capturing
    admin = {"Authorization": "Bearer adm1n"}
    with server.client() as client:
        client.post(
            "/models/iris/predict", json={"rows": [IRIS_ROW]}, headers={"X-Request-ID": "adm-1"}
        )
        _feedback(client, "iris", [{"request_id": "adm-1", "label": "setosa"}])
        assert client.get("/admin/models/iris/captures").status_code == 401
        newest = client.get("/admin/models/iris/captures?limit=1", headers=admin).json()
        labelled = client.get(
            "/admin/models/iris/captures?labelled=true&since=2000-01-01T00:00:00Z", headers=admin
        ).json()
        future = client.get("/admin/models/iris/captures?since=2999-01-01", headers=admin).json()
        bad = client.get("/admin/models/iris/captures?limit=0", headers=admin)
    assert newest["count"] == 1
    assert newest["rows"][0]["request_id"] == "adm-1"
    assert newest["rows"][0]["inputs"] == dict(zip(IRIS, IRIS_ROW, strict=True))
    assert newest["rows"][0]["label"] == "setosa"
    assert all(r["label"] is not None for r in labelled["rows"])
    assert labelled["count"] >= 1
    assert future["count"] == 0
    assert bad.status_code == 422
