"""Explanations through the live service (real pool, really trained models): ``"explain"`` in
the typed API, the ``explanation`` outputs of the Open Inference Protocol over HTTP and gRPC,
checked against the models' own outputs on every holdout row, against shap's TreeExplainer,
and by hand for the one-hot categories of the mixed-type model."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from serving.explain import Background, output_of
from serving.store import (
    EXPLAIN_FILE,
    FeatureKind,
    Manifest,
    ModelStore,
    Task,
    TrafficMode,
    TrafficPolicy,
)
from tests.serving.artifacts import flip_a_byte, publish_copy
from tests.serving.conftest import (
    IRIS_ROW,
    RunningServer,
    quiet_settings,
    running_server,
    train_into,
)
from tests.serving.process import free_port
from tests.serving.readme import README
from training.fitting import Split, load_split
from training.run import resolve_task
from training.spec import parse_spec, shipped_spec

SHIPPED = ["iris", "breast_cancer", "diabetes", "churn"]
CHUNK = 100  # the default limit of rows per explained request


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def live(trained_store: ModelStore) -> Iterator[tuple[RunningServer, str]]:
    port = free_port()
    settings = quiet_settings(trained_store, pool_size=1, grpc_port=port)
    with running_server(settings) as running:
        yield running, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(live: tuple[RunningServer, str]) -> Iterator[httpx.Client]:
    with live[0].client() as c:
        yield c


def holdout(name: str) -> Split:
    spec = shipped_spec(name)
    return load_split(spec, resolve_task(spec), _quiet)


def records(frame: pd.DataFrame, manifest: Manifest) -> list[dict[str, Any]]:
    """Rows as the typed API takes them: booleans as JSON booleans, NaN as null."""
    kinds = {f.name: f.kind for f in manifest.features}
    out = []
    for row in frame.to_dict(orient="records"):
        record: dict[str, Any] = {}
        for key, value in row.items():
            name = str(key)
            if isinstance(value, float) and np.isnan(value):
                record[name] = None
            elif kinds[name] == FeatureKind.BOOLEAN:
                record[name] = bool(value)
            else:
                record[name] = value
        out.append(record)
    return out


def explained(client: httpx.Client, name: str, rows: list[dict[str, Any]], explain: Any) -> Any:
    answer = client.post(
        f"/models/{name}/predict",
        json={"instances": rows, "explain": explain, "return_probabilities": name != "diabetes"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_holdout_row_adds_up_to_the_output(
    client: httpx.Client, trained_store: ModelStore, name: str
) -> None:
    """base + sum of contributions = the model's output in the stated space, for every
    holdout row and every output, within 1e-6; the predicted class comes first by default."""
    split = holdout(name)
    manifest, pipeline = trained_store.load_model(name, 1)
    assert manifest.explain is not None
    assert manifest.explain.status == "ok"
    document = trained_store.version_path(name, 1).joinpath(EXPLAIN_FILE).read_text()
    background = Background.from_json(json.loads(document))
    X = split.model_input(split.X_test)
    expected = output_of(pipeline, X, background)  # (rows, outputs) in the background's space
    frame = split.X_test
    for start in range(0, len(frame), CHUNK):
        body = explained(client, name, records(frame.iloc[start : start + CHUNK], manifest), "all")
        for i, row in enumerate(body["explanations"]):
            assert row["space"] == manifest.explain.space
            assert len(row["outputs"]) == expected.shape[1]
            for k, output in enumerate(row["outputs"]):
                assert list(output["contributions"]) == manifest.feature_names
                total = output["base"] + sum(output["contributions"].values())
                assert total == pytest.approx(expected[start + i, k], abs=1e-6)
                if manifest.explain.space == "probability":
                    assert total == pytest.approx(
                        body["probabilities"][i][output["class"]], abs=1e-6
                    )
                if manifest.explain.space == "value":
                    assert total == pytest.approx(body["predictions"][i], abs=1e-6)
    # The default is the predicted class alone (the regressor's value).
    body = explained(client, name, records(frame.iloc[:20], manifest), True)
    for prediction, row in zip(body["predictions"], body["explanations"], strict=True):
        assert len(row["outputs"]) == 1
        if manifest.task == Task.CLASSIFICATION:
            assert row["outputs"][0]["class"] == prediction
        else:
            assert "class" not in row["outputs"][0]


def test_forest_contributions_equal_shaps_tree_explainer(
    client: httpx.Client, trained_store: ModelStore
) -> None:
    shap = pytest.importorskip("shap", reason="the explain extra (CI installs it)")
    split = holdout("breast_cancer")
    manifest, pipeline = trained_store.load_model("breast_cancer", 1)
    frame = split.X_test.iloc[:CHUNK]
    X = split.model_input(frame)
    Xt = pipeline[:-1].transform(X) if len(pipeline) > 1 else X
    assert Xt.shape[1] == len(frame.columns)  # one column per feature: no grouping to undo
    theirs = np.asarray(
        shap.TreeExplainer(pipeline[-1]).shap_values(Xt)
    )  # (rows, features, classes)
    body = explained(client, "breast_cancer", records(frame, manifest), "all")
    ours = np.array(
        [
            [list(o["contributions"].values()) for o in row["outputs"]]
            for row in body["explanations"]
        ]
    ).transpose(0, 2, 1)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_one_hot_categories_are_summed_back_to_their_feature(
    client: httpx.Client, trained_store: ModelStore
) -> None:
    """churn (one-hot categories, scaled numbers, logistic regression): a categorical feature's
    contribution is the sum over its one-hot columns of coefficient x (value - training mean),
    worked out here by hand from the fitted pipeline."""
    split = holdout("churn")
    manifest, pipeline = trained_store.load_model("churn", 1)
    categorical = [f.name for f in manifest.features if f.categories]
    assert categorical
    preprocess, model = pipeline[:-1], pipeline[-1]
    columns = list(preprocess.get_feature_names_out())
    means = preprocess.transform(split.model_input(split.X_train)).mean(axis=0)
    frame = split.X_test.iloc[:30]
    Xt = preprocess.transform(split.model_input(frame))
    body = explained(client, "churn", records(frame, manifest), True)
    for i, row in enumerate(body["explanations"]):
        (output,) = row["outputs"]
        sign = 1.0 if output["class"] == model.classes_[1] else -1.0
        for feature in categorical:
            mine = [
                j for j, c in enumerate(columns) if c.split("__", 1)[-1].startswith(feature + "_")
            ]
            assert len(mine) >= 2, columns
            by_hand = sign * sum(model.coef_[0][j] * (Xt[i, j] - means[j]) for j in mine)
            assert output["contributions"][feature] == pytest.approx(by_hand, abs=1e-9)
        assert not set(output["contributions"]) - set(manifest.feature_names)


def test_v2_http_explanation_outputs(client: httpx.Client) -> None:
    meta = client.get("/v2/models/iris").json()
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["explanation"]["shape"] == [-1, 5]
    assert outputs["explanation_all"]["shape"] == [-1, 3, 5]
    assert meta["parameters"]["explanation_space"] == "logit"
    assert meta["parameters"]["explanation_columns"][0] == "base"
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]
    body = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP64",
                "shape": [2, 4],
                "data": [v for row in rows for v in row],
            }
        ],
        "outputs": [{"name": "predict"}, {"name": "explanation"}, {"name": "explanation_all"}],
    }
    answer = client.post("/v2/models/iris/infer", json=body)
    assert answer.status_code == 200, answer.text
    out = {o["name"]: o for o in answer.json()["outputs"]}
    one = np.array(out["explanation"]["data"]).reshape(out["explanation"]["shape"])
    every = np.array(out["explanation_all"]["data"]).reshape(out["explanation_all"]["shape"])
    assert one.shape == (2, 5)
    assert every.shape == (2, 3, 5)
    typed = client.post("/models/iris/predict", json={"rows": rows, "explain": "all"}).json()
    classes = meta["parameters"]["classes"]
    for i, row in enumerate(typed["explanations"]):
        for k, output in enumerate(row["outputs"]):
            assert every[i, k].tolist() == [output["base"], *output["contributions"].values()]
        predicted = classes.index(out["predict"]["data"][i])
        assert one[i].tolist() == every[i, predicted].tolist()
    # Not asked for: not computed, not returned.
    plain = client.post("/v2/models/iris/infer", json={"inputs": body["inputs"]}).json()
    assert [o["name"] for o in plain["outputs"]] == ["predict", "predict_proba"]


def test_grpc_explanation_output(live: tuple[RunningServer, str], client: httpx.Client) -> None:
    grpc_client = tg.InferenceServerClient(live[1])
    try:
        tensor = tg.InferInput("input", [1, 30], "FP64")
        names = [f["name"] for f in client.get("/models/breast_cancer").json()["features"]]
        examples = [f["example"] for f in client.get("/models/breast_cancer").json()["features"]]
        tensor.set_data_from_numpy(np.array([examples], dtype=np.float64))
        result = grpc_client.infer(
            "breast_cancer", [tensor], outputs=[tg.InferRequestedOutput("explanation")]
        )
        got = result.as_numpy("explanation")
        assert got.shape == (1, 31)
        typed = client.post(
            "/models/breast_cancer/predict", json={"rows": [examples], "explain": True}
        ).json()
        output = typed["explanations"][0]["outputs"][0]
        assert list(output["contributions"]) == names
        np.testing.assert_allclose(got[0], [output["base"], *output["contributions"].values()])
    finally:
        grpc_client.close()


def test_too_many_rows_is_a_clear_422(client: httpx.Client) -> None:
    answer = client.post("/models/iris/predict", json={"rows": [IRIS_ROW] * 101, "explain": True})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["type"] == "not_explainable"
    assert error["details"][0]["loc"] == ["explain"]
    assert "at most 100" in error["message"]
    # The same rows without explanations are fine.
    assert client.post("/models/iris/predict", json={"rows": [IRIS_ROW] * 101}).status_code == 200


def test_explain_must_be_true_false_or_all(client: httpx.Client) -> None:
    for wrong in ("yes", 1, None, ["all"]):
        answer = client.post("/models/iris/predict", json={"rows": [IRIS_ROW], "explain": wrong})
        assert answer.status_code == 422, wrong
        assert answer.json()["error"]["details"][0]["loc"][0] == "explain"


def test_model_info_says_whether_explanations_work(client: httpx.Client) -> None:
    info = client.get("/models/churn").json()["explain"]
    assert info == {"available": True, "method": "linear", "space": "log-odds"}
    assert client.get("/models/breast_cancer").json()["explain"]["method"] == "tree"


def test_explain_requests_of_one_version_share_batches(live: tuple[RunningServer, str]) -> None:
    served = live[0].app.state.dataplane.models[("breast_cancer", 1)]
    assert served.explainer is not None
    before = (served.explainer.batches, served.batcher.batches)

    async def many() -> None:
        async with httpx.AsyncClient(base_url=live[0].url, timeout=30) as c:
            row = {"rows": [[float(v) for v in range(30)]], "explain": True}
            answers = await asyncio.gather(
                *[c.post("/models/breast_cancer/predict", json=row) for _ in range(40)]
            )
            assert all(a.status_code == 200 for a in answers)

    asyncio.run(many())
    sent = served.explainer.batches - before[0]
    assert 1 <= sent < 40  # batched together ...
    assert served.batcher.batches == before[1]  # ... and apart from plain predictions


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore) -> ModelStore:
    """A model no exact method explains (k nearest neighbours), and a copy of iris as a
    version trained before explanations existed."""
    store = train_into(tmp_path_factory.mktemp("odd"), [])
    from training.run import train

    data = shipped_spec("iris").model_dump(mode="json", by_alias=True)
    data["name"] = "iris_knn"
    data["estimator"] = {"class": "sklearn.neighbors.KNeighborsClassifier", "params": {}}
    data["base_dir"] = shipped_spec("iris").base_dir
    train(parse_spec(data, origin="iris_knn"), store, echo=_quiet)
    version = publish_copy(
        store, "iris_old", trained_store, "iris", 1, manifest_changes={"explain": None}
    )
    store.promote("iris_old", version)
    return store


def test_unsupported_estimator_and_old_version_are_refused_with_the_reason(
    odd_store: ModelStore,
) -> None:
    manifest = odd_store.manifest("iris_knn", 1)
    assert manifest.explain is not None
    assert manifest.explain.status == "unsupported"
    assert EXPLAIN_FILE not in manifest.files
    with running_server(quiet_settings(odd_store, pool_size=1)) as running, running.client() as c:
        body = {"rows": [IRIS_ROW], "explain": True}
        answer = c.post("/models/iris_knn/predict", json=body)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["type"] == "not_explainable"
        reason = error["details"][0]["msg"]
        assert "KNeighborsClassifier" in reason
        assert "supported:" in reason
        assert error["details"][0]["loc"] == ["explain"]
        # It still predicts.
        assert c.post("/models/iris_knn/predict", json={"rows": [IRIS_ROW]}).status_code == 200
        old = c.post("/models/iris_old/predict", json=body)
        assert old.status_code == 422
        assert "retrain" in old.json()["error"]["details"][0]["msg"]
        v2 = c.post(
            "/v2/models/iris_knn/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP64", "shape": [1, 4], "data": IRIS_ROW}
                ],
                "outputs": [{"name": "explanation"}],
            },
        )
        assert v2.status_code == 400
        assert "KNeighborsClassifier" in v2.json()["error"]
        assert c.get("/models/iris_knn").json()["explain"]["available"] is False


def test_inline_executor_explains_too(trained_store: ModelStore) -> None:
    settings = quiet_settings(trained_store, inference="inline")
    with running_server(settings) as running, running.client() as c:
        answer = c.post("/models/diabetes/predict", json={"rows": [[0.0] * 10], "explain": True})
        assert answer.status_code == 200, answer.text
        output = answer.json()["explanations"][0]["outputs"][0]
        total = output["base"] + sum(output["contributions"].values())
        assert total == pytest.approx(answer.json()["predictions"][0], abs=1e-6)


def test_a_pool_of_one_predicts_while_it_builds_its_first_explainer(
    trained_store: ModelStore,
) -> None:
    """In a pool of one worker, the worker's first explanation (importing shap, building the
    explainer) takes a second or more; predictions sent meanwhile come back long before it."""
    settings = quiet_settings(trained_store, inference="pool", pool_size=1)
    row = holdout("breast_cancer").X_test.iloc[:1].to_numpy().tolist()
    took: dict[str, float] = {}

    def explain(url: str) -> None:
        started = time.monotonic()
        answer = httpx.post(
            f"{url}/models/breast_cancer/predict", json={"rows": row, "explain": True}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        took["explanation"] = time.monotonic() - started

    with running_server(settings) as running, running.client() as c:
        thread = threading.Thread(target=explain, args=(running.url,))
        thread.start()
        time.sleep(0.2)  # the explained batch is on the worker
        started = time.monotonic()
        for _ in range(5):
            answer = c.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
            assert answer.json()["predictions"] == ["setosa"]
        took["predictions"] = time.monotonic() - started
        thread.join(60)
    assert "explanation" in took
    assert took["predictions"] < took["explanation"] / 2, took


def test_grpc_unsupported_is_invalid_argument(odd_store: ModelStore) -> None:
    port = free_port()
    with running_server(quiet_settings(odd_store, pool_size=1, grpc_port=port)):
        c = tg.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            tensor = tg.InferInput("input", [1, 4], "FP64")
            tensor.set_data_from_numpy(np.array([IRIS_ROW]))
            with pytest.raises(InferenceServerException) as caught:
                c.infer("iris_knn", [tensor], outputs=[tg.InferRequestedOutput("explanation")])
            assert "INVALID_ARGUMENT" in str(caught.value.status())
            assert "KNeighborsClassifier" in caught.value.message()
        finally:
            c.close()


def test_contributions_that_overflow_are_refused_like_outputs(client: httpx.Client) -> None:
    """A value far outside the training range can make a contribution infinite (the scaled
    value times a coefficient) though the probabilities stay finite: JSON cannot carry it."""
    row = [5.1, 3.5, 1.4, 1.7976931348623155e308]
    plain = client.post("/models/iris/predict", json={"rows": [IRIS_ROW, row]})
    explained = client.post("/models/iris/predict", json={"rows": [IRIS_ROW, row], "explain": True})
    assert explained.status_code == 422, explained.text
    assert [d["loc"] for d in explained.json()["error"]["details"]] == [[1]]
    assert plain.status_code == 200, plain.text  # the probabilities saturate: finite


def test_the_readme_example_is_answered_as_shown(client: httpx.Client) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Explanations") :]
    body = re.search(r"-d '(\{.*?\})'", section)
    assert body is not None
    answer = client.post("/models/churn/predict", content=body.group(1))
    assert answer.status_code == 200, answer.text
    shown = re.search(
        r'"explanations":\[\{"space":"([^"]+)","outputs":\[\{"class":"(\w+)"', section
    )
    assert shown is not None
    row = answer.json()["explanations"][0]
    assert (row["space"], row["outputs"][0]["class"]) == shown.groups()
    for feature, value in re.findall(
        r'"(\w+)":(-?\d+\.\d+)', section.split('"contributions":', 1)[1]
    ):
        assert row["outputs"][0]["contributions"][feature] == pytest.approx(float(value), abs=0.01)


@pytest.fixture(scope="module")
def canary_store(tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore) -> ModelStore:
    """iris v1 (production, explainable) and v2 (a copy without explanations) taking every
    request of a canary."""
    store = ModelStore(tmp_path_factory.mktemp("canary"))
    assert publish_copy(store, "iris", trained_store, "iris", 1, with_explain=True) == 1
    store.promote("iris", 1)
    changes = {"explain": None}
    assert publish_copy(store, "iris", trained_store, "iris", 1, manifest_changes=changes) == 2
    policy = TrafficPolicy(TrafficMode.CANARY, 1, ((1, 0.0), (2, 1.0)), time.time())
    store.set_traffic("iris", policy)
    return store


def test_explanations_are_answered_by_production_outside_an_experiment(
    canary_store: ModelStore,
) -> None:
    with (
        running_server(quiet_settings(canary_store, pool_size=1)) as running,
        running.client() as c,
    ):
        plain = c.post("/models/iris/predict", json={"rows": [IRIS_ROW]})
        assert plain.headers["x-model-version"] == "2"  # the canary takes every plain request
        explained = c.post("/models/iris/predict", json={"rows": [IRIS_ROW], "explain": True})
        assert explained.status_code == 200, explained.text
        assert explained.headers["x-model-version"] == "1"
        assert explained.json()["explanations"][0]["outputs"][0]["class"] == "setosa"
        # A version named in the path explains, or says why not.
        pinned = c.post(
            "/models/iris/versions/2/predict", json={"rows": [IRIS_ROW], "explain": True}
        )
        assert pinned.status_code == 422
        assert pinned.json()["error"]["type"] == "not_explainable"


def test_a_background_that_no_longer_verifies_is_a_503_and_predictions_go_on(
    tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore
) -> None:
    """The explainer is built on the first explained request, from the store: a background
    changed on disk since the version was loaded fails verification then. The request gets
    503 (the service's fault), the cause goes to the log, and it is not retried per request."""
    store = ModelStore(tmp_path_factory.mktemp("broken"))
    publish_copy(store, "iris", trained_store, "iris", 1, with_explain=True)
    store.promote("iris", 1)
    with running_server(quiet_settings(store, pool_size=1)) as running, running.client() as c:
        flip_a_byte(store.version_path("iris", 1) / EXPLAIN_FILE)
        body = {"rows": [IRIS_ROW], "explain": True}
        for _ in range(2):
            answer = c.post("/models/iris/predict", json=body)
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["type"] == "explanations_unavailable"
            assert "service log" in error["message"]
            assert str(store.root) not in answer.text
        assert c.post("/models/iris/predict", json={"rows": [IRIS_ROW]}).status_code == 200


def test_explained_rows_outside_the_training_range_are_warned_about(client: httpx.Client) -> None:
    row = [5.1, 3.5, 1.4, 9.0]  # petal width far above anything in training
    answer = client.post("/models/iris/predict", json={"rows": [row], "explain": True}).json()
    assert any("petal_width_cm" in w for w in answer["warnings"])
    assert "explanations" in answer
