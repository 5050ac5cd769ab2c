import json
from pathlib import Path

import numpy as np
import pytest

from bench import mlserver_peer, workload
from bench.mlserver_peer import Config
from serving.store import MODEL_FILE, Feature, FeatureKind, IntegrityError, Manifest, ModelStore


def test_model_settings_point_at_the_store_joblib_with_batching_on(
    store: ModelStore, iris: Manifest
) -> None:
    uri = store.version_path("iris", 1) / MODEL_FILE
    settings = mlserver_peer.model_settings(
        iris, uri, Config(max_batch_size=32, max_batch_time=0.01)
    )
    assert settings == {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": 32,
        "max_batch_time": 0.01,
        "parameters": {"uri": str(uri), "version": "1"},
    }


def test_repository_has_server_and_model_settings_and_no_ports(
    store: ModelStore, tmp_path: Path
) -> None:
    root = mlserver_peer.write_repository(
        tmp_path / "repo", store, {"iris": 1}, Config(2, 16, 0.005)
    )
    server = json.loads((root / "settings.json").read_text())
    assert server["parallel_workers"] == 2
    assert server["debug"] is False
    assert server["host"] == "127.0.0.1"
    assert server["metrics_endpoint"] is None
    # Ports are set per run through MLSERVER_HTTP_PORT / MLSERVER_GRPC_PORT, which a value in
    # settings.json would override.
    assert not {"http_port", "grpc_port", "metrics_port"} & set(server)
    assert Path(server["metrics_dir"]).is_relative_to(root)
    model = json.loads((root / "iris" / "model-settings.json").read_text())
    assert Path(model["parameters"]["uri"]).is_file()
    assert (model["max_batch_size"], model["max_batch_time"]) == (16, 0.005)


def test_repository_refuses_an_artifact_that_fails_its_checksum(
    tmp_path: Path, store: ModelStore
) -> None:
    import shutil

    copy = ModelStore(tmp_path / "store")
    shutil.copytree(store.root / "iris", copy.root / "iris")
    with (copy.version_path("iris", 1) / MODEL_FILE).open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(IntegrityError):
        mlserver_peer.write_repository(tmp_path / "repo", copy, {"iris": 1}, Config())


def test_spec_runs_the_venv_mlserver_on_the_chosen_port(tmp_path: Path) -> None:
    spec = mlserver_peer.spec(tmp_path / "venv", tmp_path / "repo")
    assert spec.argv == [
        str(tmp_path / "venv" / "bin" / "mlserver"),
        "start",
        str(tmp_path / "repo"),
    ]
    assert spec.env["MLSERVER_HTTP_PORT"] == "{port}"
    assert int(spec.env["MLSERVER_GRPC_PORT"]) > 0
    assert spec.ready_path == "/v2/health/ready"


def test_ndarray_body_is_one_row_major_fp64_tensor_the_pipeline_agrees_with(
    store: ModelStore, iris: Manifest
) -> None:
    rows = workload.sample_rows(iris, 5, seed=3)
    text = mlserver_peer.infer_body(iris, rows)
    assert "\n" not in text
    (tensor,) = json.loads(text)["inputs"]
    assert (tensor["datatype"], tensor["shape"]) == ("FP64", [5, 4])
    # Decoded as the V2 protocol says (row-major data reshaped to shape), the estimator gives
    # the same predictions as on the rows themselves.
    decoded = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    _, estimator = store.load_model("iris", 1)
    assert (
        estimator.predict(decoded).tolist()
        == estimator.predict(workload.model_input(iris, rows)).tolist()
    )


def test_dataframe_body_names_one_column_per_feature(iris: Manifest) -> None:
    colour = Feature(name="colour", kind=FeatureKind.CATEGORICAL, categories=["blue", "red"])
    count = Feature(name="count", kind=FeatureKind.INTEGER, min=0, max=9)
    flag = Feature(name="flag", kind=FeatureKind.BOOLEAN)
    manifest = iris.model_copy(
        update={
            "input_format": "dataframe",
            "features": [iris.features[0], colour, count, flag],
        }
    )
    rows: list[workload.Row] = [[5.1, "red", 3, True], [6.2, "blue", 0, False]]
    body = json.loads(mlserver_peer.infer_body(manifest, rows))
    assert body["parameters"] == {"content_type": "pd"}
    assert [(i["name"], i["datatype"], i["shape"], i["data"]) for i in body["inputs"]] == [
        ("sepal_length_cm", "FP64", [2], [5.1, 6.2]),
        ("colour", "BYTES", [2], ["red", "blue"]),
        ("count", "INT64", [2], [3, 0]),
        ("flag", "BOOL", [2], [True, False]),
    ]


def test_ndarray_body_rejects_text(iris: Manifest) -> None:
    with pytest.raises(ValueError, match="numbers"):
        mlserver_peer.infer_body(iris, [[1.0, 2.0, "x", 4.0]])


def test_predictions_read_the_predict_output() -> None:
    response = {
        "model_name": "iris",
        "outputs": [
            {"name": "predict", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]},
        ],
    }
    assert mlserver_peer.predictions(json.dumps(response)) == ["a", "b"]
    with pytest.raises(ValueError, match="predict"):
        mlserver_peer.predictions('{"error": "Model iris is not ready yet."}')
    with pytest.raises(ValueError, match="predict"):
        mlserver_peer.predictions("not json")


def test_matching_compares_labels_as_text_and_numbers_within_float32() -> None:
    assert mlserver_peer.count_matches(["setosa", 1, 2.0], ["setosa", "1", 2.0000001]) == 3
    assert mlserver_peer.count_matches(["setosa", 1.0], ["virginica", 1.01]) == 0
    assert mlserver_peer.count_matches(["a"], ["a", "b"]) == 0  # not comparable


def test_package_versions_of_a_missing_venv_are_empty(tmp_path: Path) -> None:
    assert mlserver_peer.package_versions(tmp_path / "nothing") == {}
