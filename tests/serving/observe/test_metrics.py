"""GET /metrics against the live server (real pool, real models): counts and histogram sums
after known traffic, request ids, drift counters and response warnings, load failures (two
server processes: test_metrics_processes.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.store import MODEL_FILE, ModelStore
from tests.serving.artifacts import publish_copy, set_production
from tests.serving.conftest import RunningServer, quiet_settings, running_server

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "metrics-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
IRIS = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
PREDICT = "/models/{name}/predict"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def settled_scrape(http: httpx.Client) -> Samples:
    """A scrape once no request but the scrape itself is in flight: a file response (the docs'
    assets) closes its file after its last byte is sent, so the client can scrape before the
    edge has counted it."""
    deadline = time.monotonic() + 5.0
    samples = scrape(http)
    while value(samples, "servewell_requests_in_flight") > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
        samples = scrape(http)
    return samples


@pytest.fixture(scope="module")
def store(trained_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """iris, diabetes and churn, copied from the session's trained store (no training here)."""
    own = ModelStore(tmp_path_factory.mktemp("metrics"))
    for name in ("iris", "diabetes", "churn"):
        set_production(own, name, publish_copy(own, name, trained_store, name, 1))
    return own


@pytest.fixture(scope="module")
def live(store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(store, pool_size=1, poll_interval_s=0, admin_token=TOKEN)
    with running_server(settings) as running:
        yield running


@pytest.fixture(scope="module")
def http(live: RunningServer) -> Iterator[httpx.Client]:
    with live.client() as c:
        yield c


def test_counts_and_histogram_sums_match_the_traffic(live: RunningServer, http: httpx.Client):
    before = scrape(http)
    started = time.perf_counter()
    for _ in range(7):
        assert http.post("/models/iris/predict", json={"instances": [IRIS]}).status_code == 200
    three = {"rows": [[5.1, 3.5, 1.4, 0.2]] * 3}
    assert http.post("/models/iris/versions/1/predict", json=three).status_code == 200
    assert http.post("/models/iris/predict", json={"rows": [[1, 2]]}).status_code == 422
    elapsed = time.perf_counter() - started
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    iris = {"model": "iris", "version": "1"}
    plain = {**iris, "endpoint": PREDICT}
    versioned = {**iris, "endpoint": "/models/{name}/versions/{version}/predict"}
    assert delta("servewell_requests_total", **plain, status="200") == 7
    assert delta("servewell_requests_total", **versioned, status="200") == 1
    # The fast path names the model even when the body is refused.
    assert delta("servewell_requests_total", **plain, status="422") == 1
    assert delta("servewell_request_duration_seconds_count", **plain) == 8
    latency = delta("servewell_request_duration_seconds_sum", **plain)
    assert 0 < latency < elapsed
    # Every row goes through exactly one batch, whatever the batching.
    assert delta("servewell_batch_rows_sum", **iris) == 10
    batches = delta("servewell_batch_rows_count", **iris)
    served = live.app.state.dataplane.models[("iris", 1)]
    assert value(after, "servewell_batch_rows_count", **iris) == served.batcher.batches
    assert 1 <= batches <= 8
    assert delta("servewell_batch_queue_wait_seconds_count", **iris) == 8
    runtime = served.runtime
    assert delta("servewell_inference_seconds_count", model="iris", runtime=runtime) == batches
    assert 0 < delta("servewell_inference_seconds_sum", model="iris", runtime=runtime) < elapsed
    # Cumulative buckets end with every observation.
    assert value(after, "servewell_batch_rows_bucket", **iris, le="+Inf") == batches + value(
        before, "servewell_batch_rows_count", **iris
    )
    assert value(after, "servewell_requests_in_flight") == 1  # the scrape itself
    assert value(after, "servewell_inference_workers") == 1
    assert value(after, "servewell_batch_queue_rows", **iris) == 0
    info = {**iris, "runtime": runtime, "default": "true"}
    assert value(after, "servewell_model_info", **info) == 1
    assert value(after, "servewell_model_load_seconds", **iris) > 0


def test_the_docs_and_their_assets_have_their_own_endpoint_labels(http: httpx.Client) -> None:
    before = scrape(http)
    for path in ("/openapi.json", "/docs", "/docs-static/swagger-ui.css", "/docs-static/nothing"):
        http.get(path)
    http.get("/no/such/path")
    after = settled_scrape(http)

    def delta(endpoint: str, status: str) -> float:
        labels = {"endpoint": endpoint, "model": "", "version": "", "status": status}
        return value(after, "servewell_requests_total", **labels) - value(
            before, "servewell_requests_total", **labels
        )

    assert delta("/openapi.json", "200") == 1
    assert delta("/docs", "200") == 1
    assert delta("/docs-static/{path}", "200") == 1
    assert delta("/docs-static/{path}", "404") == 1
    assert delta("unmatched", "404") == 1


def test_request_ids_are_accepted_generated_and_on_every_response(http: httpx.Client):
    given = http.post(
        "/models/iris/predict", json={"instances": [IRIS]}, headers={"x-request-id": "abc-123"}
    )
    assert given.headers["x-request-id"] == "abc-123"
    generated = [http.get("/health/live").headers["x-request-id"] for _ in range(2)]
    assert generated[0]
    assert generated[0] != generated[1]
    assert http.get("/nowhere").headers["x-request-id"]  # 404s too
    assert http.post("/models/iris/predict", content=b"{").headers["x-request-id"]
    for bad in ("has space", "x" * 129, "semi;colon", "é"):
        response = http.get("/health/live", headers={b"x-request-id": bad.encode()})
        assert response.status_code == 400, bad
        assert "X-Request-ID" in response.json()["error"]["message"]
        assert response.headers["x-request-id"] != bad


def test_out_of_range_inputs_move_the_drift_counters_and_warn(
    http: httpx.Client, store: ModelStore
):
    petal = store.manifest("iris", 1).features[2]
    before = scrape(http)
    for _ in range(3):
        in_range = http.post("/models/iris/predict", json={"instances": [IRIS]})
        assert "warnings" not in in_range.json()
    mid = scrape(http)
    far = {**IRIS, "petal_length_cm": 40.0}
    response = http.post("/models/iris/predict", json={"instances": [far, far, IRIS]})
    assert response.status_code == 200
    assert response.json()["warnings"] == [
        f"petal_length_cm is outside its training range [{petal.min:g}, {petal.max:g}]"
    ]
    after = scrape(http)
    counter = "servewell_input_out_of_range_total"
    for feature in ("sepal_length_cm", "petal_length_cm"):
        assert value(mid, counter, model="iris", feature=feature) == value(
            before, counter, model="iris", feature=feature
        )
    assert (
        value(after, counter, model="iris", feature="petal_length_cm")
        - value(mid, counter, model="iris", feature="petal_length_cm")
        == 2
    )
    assert value(after, counter, model="iris", feature="sepal_length_cm") == value(
        mid, counter, model="iris", feature="sepal_length_cm"
    )
    checked = "servewell_input_rows_checked_total"
    assert value(after, checked, model="iris") - value(before, checked, model="iris") == 6


def test_unseen_categories_are_counted_by_feature(http: httpx.Client, store: ModelStore):
    manifest = store.manifest("churn", 1)
    known = {f.name: f.example for f in manifest.features}
    position = manifest.feature_names.index("payment_method")
    before = scrape(http)
    assert http.post("/models/churn/predict", json={"instances": [known]}).status_code == 200
    unseen = {**known, "contract": "decade-long"}
    assert http.post("/models/churn/predict", json={"instances": [unseen]}).status_code == 422
    row = [known[name] for name in manifest.feature_names]
    row[position] = "barter"
    assert http.post("/models/churn/predict", json={"rows": [row, row]}).status_code == 422
    after = scrape(http)
    counter = "servewell_input_unseen_category_total"
    for feature, added in (("contract", 1), ("payment_method", 2), ("internet_service", 0)):
        labels = {"model": "churn", "feature": feature}
        assert value(after, counter, **labels) - value(before, counter, **labels) == added


def test_drift_endpoint_reports_window_share_and_psi(http: httpx.Client, store: ModelStore):
    petal_width = store.manifest("iris", 1).features[3]
    untouched = http.get("/models/diabetes/drift").json()
    assert untouched["rows_in_window"] == 0
    assert all(f["psi"] is None for f in untouched["features"])

    rows = [[5.1 + i * 0.1, 3.0, 1.4 + i * 0.05, 0.2] for i in range(20)]
    rows[0][3] = 9.0
    assert http.post("/models/iris/predict", json={"rows": rows}).status_code == 200
    report = http.get("/models/iris/drift").json()
    assert report["window_rows"] == 10_000
    assert report["rows_in_window"] == report["rows_seen"] >= 20
    features = {f["name"]: f for f in report["features"]}
    width = features["petal_width_cm"]
    assert width["training_range"] == [petal_width.min, petal_width.max]
    assert 0 < width["out_of_range_share"] <= 1 / 20
    # Mostly setosa-sized petals: far from the training mix of three species.
    assert features["petal_length_cm"]["psi"] > 0.25
    assert http.get("/models/nope/drift").status_code == 404


def test_a_failed_hot_swap_load_is_counted(http: httpx.Client, store: ModelStore):
    before = value(scrape(http), "servewell_model_load_failures_total", model="diabetes")
    new = publish_copy(store, "diabetes", store, "diabetes", 1)
    model_file = store.version_path("diabetes", new) / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes()[:-10])  # no longer matches its hash
    set_production(store, "diabetes", new)
    reloaded = http.post("/admin/models/diabetes/reload", headers=AUTH)
    assert reloaded.status_code == 200, reloaded.text
    assert str(new) in reloaded.json()["rejected"]
    after = scrape(http)
    assert value(after, "servewell_model_load_failures_total", model="diabetes") == before + 1
    # The old version keeps serving, and the info metric says so.
    info = {"model": "diabetes", "version": "1", "default": "true"}
    runtimes = [
        labels
        for (name, labels), v in after.items()
        if name == "servewell_model_info" and v == 1 and set(info.items()) <= labels
    ]
    assert len(runtimes) == 1
    set_production(store, "diabetes", 1)
    assert http.post("/admin/models/diabetes/reload", headers=AUTH).status_code == 200


def test_a_model_refused_at_startup_is_counted(tampered_server: RunningServer):
    with tampered_server.client() as http:
        samples = scrape(http)
    assert value(samples, "servewell_model_load_failures_total", model="diabetes") == 1
    assert value(samples, "servewell_model_load_failures_total", model="iris") == 0
    served = [labels for (n, labels), v in samples.items() if n == "servewell_model_info"]
    assert [dict(labels)["model"] for labels in served] == ["iris"]


def test_metrics_off_means_no_metrics_no_drift_no_warnings(store: ModelStore, tmp_path: Path):
    settings = quiet_settings(store, inference="inline", poll_interval_s=0, metrics=False)
    with running_server(settings) as running, running.client() as off:
        far = {**IRIS, "petal_length_cm": 40.0}
        response = off.post("/models/iris/predict", json={"instances": [far]})
        assert response.status_code == 200
        assert "warnings" not in response.json()
        assert response.headers["x-request-id"]
        assert off.get("/metrics").status_code == 404
        assert off.get("/models/iris/drift").json()["error"]["type"] == "not_found"


def test_open_inference_protocol_requests_are_counted_by_model(http: httpx.Client) -> None:
    before = scrape(http)
    tensor = {
        "name": "input",
        "shape": [2, 4],
        "datatype": "FP64",
        "data": [5.1, 3.5, 1.4, 0.2] * 2,
    }
    assert http.post("/v2/models/iris/infer", json={"inputs": [tensor]}).status_code == 200
    assert http.post("/v2/models/iris/infer", json={"inputs": []}).status_code == 400
    after = scrape(http)
    labels = {"model": "iris", "version": "1", "endpoint": "/v2/models/{name}/infer"}
    for status, count in (("200", 1), ("400", 1)):
        counted = value(after, "servewell_requests_total", **labels, status=status)
        assert counted - value(before, "servewell_requests_total", **labels, status=status) == count
