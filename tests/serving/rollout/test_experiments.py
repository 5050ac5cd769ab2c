"""Traffic experiments against the live server: shadow, canary and A/B, their comparison,
the guard, and promote / rollback while one runs (real pool, real models, SQLite capture)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris

from serving.store import MODEL_FILE, ModelStore
from tests.serving.artifacts import (
    flip_a_byte,
    publish_copy,
    raising_model_bytes,
    slow_model_bytes,
)
from tests.serving.conftest import RunningServer, quiet_settings, running_server
from tests.serving.rollout.variants import iris_rows, publish_variant

TOKEN = "rollout-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore) -> ModelStore:
    """iris v1 (production), v2 (refitted: answers differ on some rows), v3 (raises on rows
    whose first value is negative), v4 (slow), v5 (its model file altered after publishing)."""
    store = ModelStore(tmp_path_factory.mktemp("rollout"))
    publish_copy(store, "iris", trained_store, "iris", 1)
    store.promote("iris", 1)
    assert publish_variant(store) == 2
    assert (
        publish_copy(
            store, "iris", store, "iris", 1, model_bytes=raising_model_bytes(False), with_onnx=False
        )
        == 3
    )
    assert (
        publish_copy(
            store, "iris", store, "iris", 1, model_bytes=slow_model_bytes(0.05), with_onnx=False
        )
        == 4
    )
    assert publish_copy(store, "iris", store, "iris", 1, with_onnx=False) == 5
    flip_a_byte(store.version_path("iris", 5) / MODEL_FILE)
    return store


def _settings(store: ModelStore) -> Any:
    return quiet_settings(
        store,
        pool_size=1,
        poll_interval_s=0.2,
        admin_token=TOKEN,
        capture="all",
        capture_url=f"sqlite:///{store.root / 'capture.sqlite'}",
        guard_interval_s=0.2,
    )


@pytest.fixture(scope="module")
def live(store: ModelStore) -> Iterator[RunningServer]:
    with running_server(_settings(store)) as running:
        yield running


@pytest.fixture
def http(live: RunningServer, store: ModelStore) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client
        client.delete("/admin/models/iris/traffic", headers=AUTH)  # every test starts afresh
        if store.production("iris") != 1:
            client.post("/admin/models/iris/promote/1", headers=AUTH)


def put(http: httpx.Client, **policy: Any) -> httpx.Response:
    return http.put("/admin/models/iris/traffic", json=policy, headers=AUTH)


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


async def _send(
    url: str, bodies: list[tuple[str, dict[str, Any], dict[str, str]]], concurrency: int = 20
) -> list[httpx.Response]:
    """POST each (path, body, headers), ``concurrency`` at a time, answers in order."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
            async with gate:
                return await client.post(path, json=body, headers=headers)

        return await asyncio.gather(*(one(*b) for b in bodies))


def send(
    url: str, bodies: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[httpx.Response]:
    return asyncio.run(_send(url, bodies))


def pinned(http: httpx.Client, version: int, rows: list[list[float]]) -> list[str]:
    """A version's answers for ``rows``, asked for by its versioned path (never routed)."""
    response = http.post(f"/models/iris/versions/{version}/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == str(version)
    answers: list[str] = response.json()["predictions"]
    return answers


def shadow_figures(http: httpx.Client) -> dict[str, Any]:
    versions = http.get("/models/iris/compare").json()["versions"]
    found: dict[str, Any] = next(v for v in versions if v["role"] == "shadow")["shadow"]
    return found


# -- shadow ------------------------------------------------------------------------------------


def test_shadow_answers_with_production_and_captures_the_candidate(
    live: RunningServer, http: httpx.Client
) -> None:
    response = put(http, mode="shadow", version=2)
    assert response.status_code == 200, response.text
    assert response.json()["applied"] is True
    rows = iris_rows(200, seed=1)
    bodies = [
        ("/models/iris/predict", {"rows": [row]}, {"X-Request-ID": f"shadow-{i}"})
        for i, row in enumerate(rows)
    ]
    answers = send(live.url, bodies)

    production, candidate = pinned(http, 1, rows), pinned(http, 2, rows)
    assert production != candidate  # the candidate really answers differently on some rows
    for i, answer in enumerate(answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1"
        assert answer.json()["version"] == 1
        assert answer.json()["predictions"] == [production[i]]
    wait_for(lambda: shadow_figures(http)["rows"] == len(rows))
    figures = shadow_figures(http)
    agreed = sum(p == c for p, c in zip(production, candidate, strict=True))
    assert figures["requests"] == len(rows)
    assert figures["errors"] == 0
    assert figures["equal_share"] == pytest.approx(agreed / len(rows))
    pairs = Counter(zip(production, candidate, strict=True))
    assert {(c["v1"], c["v2"]): c["rows"] for c in figures["confusion"]} == dict(pairs)

    # Every request's candidate answer is captured beside production's, under its request id.
    captured = http.get(
        "/admin/models/iris/captures", params={"limit": 10_000}, headers=AUTH
    ).json()["rows"]
    by_version: dict[int, dict[str, str]] = {1: {}, 2: {}}
    for row in captured:
        if row["request_id"].startswith("shadow-"):
            by_version[row["version"]][row["request_id"]] = row["prediction"]
    for version, expected in ((1, production), (2, candidate)):
        assert by_version[version] == {f"shadow-{i}": p for i, p in enumerate(expected)}

    metrics = http.get("/metrics").text
    assert (
        'servewell_shadow_requests{model="iris",outcome="answered",version="2"} 200.0' in (metrics)
        or 'servewell_shadow_requests{model="iris",version="2",outcome="answered"} 200.0' in metrics
    )


@pytest.mark.parametrize("candidate", [3, 4], ids=["raising", "slow"])
def test_a_failing_or_slow_shadow_changes_nothing_for_clients(
    live: RunningServer, http: httpx.Client, candidate: int
) -> None:
    assert put(http, mode="shadow", version=candidate).status_code == 200
    rows = [[-row[0], *row[1:]] for row in iris_rows(150, seed=2)]  # v3 fails every one
    answers = send(live.url, [("/models/iris/predict", {"rows": [row]}, {}) for row in rows])
    production = pinned(http, 1, rows)
    assert [a.status_code for a in answers] == [200] * len(rows)
    assert [a.json()["predictions"][0] for a in answers] == production
    assert {a.headers["x-model-version"] for a in answers} == {"1"}
    wait_for(lambda: sum(shadow_figures(http)[k] for k in ("requests", "skipped")) == len(rows))
    figures = shadow_figures(http)
    if candidate == 3:
        wait_for(lambda: shadow_figures(http)["errors"] == shadow_figures(http)["requests"])
        assert shadow_figures(http)["rows"] == 0
    else:
        wait_for(lambda: shadow_figures(http)["rows"] == shadow_figures(http)["requests"])
        assert figures["requests"] > 0


# -- canary and A/B ----------------------------------------------------------------------------


def test_canary_share_holds_and_each_key_keeps_its_version(
    live: RunningServer, http: httpx.Client
) -> None:
    response = put(http, mode="canary", version=2, weight=10)
    assert response.status_code == 200, response.text
    keys = [f"user-{i}" for i in range(2000)]
    row = iris_rows(1)[0]
    bodies = [("/models/iris/predict", {"rows": [row]}, {"X-Routing-Key": k}) for k in keys]
    first = [a.headers["x-model-version"] for a in send(live.url, bodies)]
    share = first.count("2") / len(first)
    assert 0.08 <= share <= 0.12, share
    assert set(first) == {"1", "2"}
    again = [a.headers["x-model-version"] for a in send(live.url, bodies[:400])]
    assert again == first[:400]
    figures = {v["version"]: v for v in http.get("/models/iris/compare").json()["versions"]}
    assert figures[2]["requests"] == first.count("2") + again.count("2")
    assert figures[1]["requests"] + figures[2]["requests"] == len(first) + len(again)


def test_a_key_field_keeps_a_user_on_one_version(live: RunningServer, http: httpx.Client) -> None:
    response = put(http, mode="canary", version=2, weight=50, key_field="sepal_length_cm")
    assert response.status_code == 200, response.text
    rows = iris_rows(60, seed=3)
    versions: dict[float, set[str]] = {}
    for _ in range(3):
        answers = send(live.url, [("/models/iris/predict", {"rows": [r]}, {}) for r in rows])
        for row, answer in zip(rows, answers, strict=True):
            versions.setdefault(row[0], set()).add(answer.headers["x-model-version"])
    assert all(len(seen) == 1 for seen in versions.values())
    assert set().union(*versions.values()) == {"1", "2"}


def test_ab_over_the_inference_protocol_says_which_version_answered(
    live: RunningServer, http: httpx.Client
) -> None:
    assert put(http, mode="ab", weights={"1": 1, "2": 1}).status_code == 200
    row = iris_rows(1)[0]
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": row}]}
    keys = [f"k{i}" for i in range(200)]
    answers = send(live.url, [("/v2/models/iris/infer", body, {"X-Routing-Key": k}) for k in keys])
    seen: Counter[str] = Counter()
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == answer.headers["x-model-version"]
        seen[answer.headers["x-model-version"]] += 1
    assert set(seen) == {"1", "2"}
    assert min(seen.values()) > 60
    # A versioned path is never shared: it asked for one version.
    pinned_answers = send(
        live.url, [("/v2/models/iris/versions/1/infer", body, {"X-Routing-Key": k}) for k in keys]
    )
    assert {a.headers["x-model-version"] for a in pinned_answers} == {"1"}


# -- setting, refusing and ending policies -----------------------------------------------------


def test_policy_refused_when_a_version_fails_verification_and_the_old_one_stays(
    http: httpx.Client,
) -> None:
    assert put(http, mode="shadow", version=2).status_code == 200
    refused = put(http, mode="canary", version=5, weight=20)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["type"] == "artifact_refused"
    assert "sha256" in refused.json()["error"]["message"]
    state = http.get("/admin/models/iris/traffic", headers=AUTH).json()
    assert state["policy"]["mode"] == "shadow"
    assert state["policy"]["shadow"] == 2
    assert state["applied"] is True


@pytest.mark.parametrize(
    ("policy", "status", "where"),
    [
        ({"mode": "canary", "version": 2, "weight": 150}, 422, ["body", "weight"]),
        ({"mode": "canary", "version": 2}, 422, ["body", "weight"]),
        ({"mode": "shadow", "version": 1}, 422, ["body", "version"]),
        ({"mode": "shadow", "version": 2, "weight": 5}, 422, ["body", "weight"]),
        ({"mode": "ab", "weights": {"1": 1}}, 422, ["body", "weights"]),
        ({"mode": "ab", "weights": {"1": 1, "2": 0}}, 422, ["body", "weights"]),
        ({"mode": "canary", "version": 2, "weight": 5, "key_field": "nope"}, 409, None),
        ({"mode": "canary", "version": 99, "weight": 5}, 404, None),
        ({"mode": "rollout", "version": 2}, 422, ["body", "mode"]),
    ],
)
def test_invalid_policies_get_a_clear_error(
    http: httpx.Client, policy: dict[str, Any], status: int, where: list[str] | None
) -> None:
    response = put(http, **policy)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if where is not None:
        assert [d["loc"] for d in error["details"]] == [where]
    assert http.get("/admin/models/iris/traffic", headers=AUTH).json()["policy"] is None


def test_traffic_endpoints_need_the_admin_token(http: httpx.Client) -> None:
    assert (
        http.put("/admin/models/iris/traffic", json={"mode": "shadow", "version": 2}).status_code
        == 401
    )
    wrong = {"authorization": "Bearer nope"}
    assert http.get("/admin/models/iris/traffic", headers=wrong).status_code == 403
    assert http.delete("/admin/models/iris/traffic", headers=wrong).status_code == 403
    missing = http.delete("/admin/models/iris/traffic", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "no_experiment"
    compare = http.get("/models/iris/compare")
    assert compare.status_code == 404
    assert compare.json()["error"]["type"] == "no_experiment"
    assert http.get("/models/nope/compare").status_code == 404


def test_promote_and_rollback_during_experiments_under_load_drop_nothing(
    live: RunningServer, http: httpx.Client
) -> None:
    assert put(http, mode="canary", version=2, weight=50).status_code == 200
    canary_of_v1 = {"mode": "canary", "version": 1, "weight": 50}
    run = asyncio.run(
        _load_while(
            live.url,
            [
                ("POST", "/admin/models/iris/promote/2", None),  # ends the first experiment
                ("PUT", "/admin/models/iris/traffic", canary_of_v1),  # v1 back as a canary
                ("POST", "/admin/models/iris/rollback", None),  # ends that one
            ],
        )
    )
    assert [r.status_code for r in run["admin"]] == [200] * 3, [r.text for r in run["admin"]]
    assert run["admin"][0].json()["default_version"] == 2
    assert run["admin"][1].json()["policy"]["production"] == 2
    failures = [r for r in run["statuses"] if r != 200]
    assert not failures
    assert len(run["statuses"]) >= 800
    assert http.get("/admin/models/iris/traffic", headers=AUTH).json()["policy"] is None
    assert http.get("/models/iris/compare").status_code == 404


async def _load_while(
    url: str, actions: list[tuple[str, str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """100 users send keyed requests while the admin calls happen one after another (each
    after 200 more answers)."""
    statuses: list[int] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=200, keepalive_expiry=1.0)
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=60, headers=AUTH, limits=limits) as admin,
    ):

        async def user(n: int) -> None:
            row = iris_rows(1, seed=n)[0]
            while not stop.is_set():
                try:
                    response = await client.post(
                        "/models/iris/predict",
                        json={"rows": [row]},
                        headers={"X-Routing-Key": f"u{n}"},
                    )
                    statuses.append(response.status_code)
                except httpx.HTTPError:
                    statuses.append(-1)

        async def answered(more: int) -> None:
            target = len(statuses) + more
            while len(statuses) < target:  # noqa: ASYNC110 (the users only append)
                await asyncio.sleep(0.02)

        users = [asyncio.create_task(user(n)) for n in range(100)]
        done = []
        await answered(200)
        for method, path, body in actions:
            done.append(await admin.request(method, path, json=body))
            await answered(200)
        stop.set()
        await asyncio.gather(*users)
    return {"statuses": statuses, "admin": done}


def test_the_guard_returns_a_failing_canary_to_production(
    live: RunningServer, http: httpx.Client
) -> None:
    guard = {"min_requests": 20, "max_error_rate_increase": 0.05, "max_quality_drop": None}
    assert put(http, mode="canary", version=3, weight=50, guard=guard).status_code == 200
    row = [-1.0, 3.0, 4.0, 1.0]  # v3 fails on it
    for i in range(100):
        http.post("/models/iris/predict", json={"rows": [row]}, headers={"X-Routing-Key": f"g{i}"})
    wait_for(lambda: http.get("/admin/models/iris/traffic", headers=AUTH).json()["policy"] is None)
    state = http.get("/admin/models/iris/traffic", headers=AUTH).json()
    assert "v3 failed" in state["ended_by_guard"]["reason"]
    keys = [f"after-{i}" for i in range(100)]
    answers = send(
        live.url, [("/models/iris/predict", {"rows": [row]}, {"X-Routing-Key": k}) for k in keys]
    )
    assert {(a.status_code, a.headers["x-model-version"]) for a in answers} == {(200, "1")}


def test_live_quality_of_a_shadow_is_compared_on_the_same_labelled_requests(
    live: RunningServer, http: httpx.Client
) -> None:
    assert put(http, mode="shadow", version=2).status_code == 200
    data = load_iris()
    rows = np.round(data.data, 3).tolist()
    labels = [str(data.target_names[t]) for t in data.target]
    answers = send(
        live.url,
        [
            ("/models/iris/predict", {"rows": [row]}, {"X-Request-ID": f"q-{i}"})
            for i, row in enumerate(rows)
        ],
    )
    assert {a.status_code for a in answers} == {200}
    wait_for(lambda: shadow_figures(http)["rows"] == len(rows))
    feedback = [{"request_id": f"q-{i}", "label": label} for i, label in enumerate(labels)]
    assert http.post("/models/iris/feedback", json=feedback).status_code == 200
    report = http.get("/models/iris/compare").json()
    quality = {v["version"]: v["live_quality"] for v in report["versions"]}
    assert quality[1]["rows"] == quality[2]["rows"] == len(rows)
    production, candidate = pinned(http, 1, rows), pinned(http, 2, rows)
    right_1 = np.array([p == t for p, t in zip(production, labels, strict=True)])
    right_2 = np.array([p == t for p, t in zip(candidate, labels, strict=True)])
    (test,) = report["comparisons"]
    assert test["test"].startswith("McNemar")
    assert test["rows"] == len(rows)
    assert test["difference"] == pytest.approx(right_2.mean() - right_1.mean())
    assert 0 <= test["p_value"] <= 1
    assert test["significant"] == (test["p_value"] < 0.05)


def test_a_policy_survives_a_restart(
    store: ModelStore, live: RunningServer, http: httpx.Client
) -> None:
    assert put(http, mode="canary", version=2, weight=30).status_code == 200
    with running_server(_settings(store)) as again, again.client() as other:
        state = other.get("/admin/models/iris/traffic", headers=AUTH).json()
        assert state["applied"] is True
        assert state["policy"]["weights"] == {"1": 0.7, "2": 0.3}
        row = iris_rows(1)[0]
        seen = {
            other.post(
                "/models/iris/predict", json={"rows": [row]}, headers={"X-Routing-Key": f"r{i}"}
            ).headers["x-model-version"]
            for i in range(60)
        }
        assert seen == {"1", "2"}
