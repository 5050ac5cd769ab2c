"""Rows encoded for transport and decoded for the estimator give the model's own answers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsRegressor

from serving.core.dataplane import RowEncoder
from serving.execution.runtime import LoadedModel, RuntimePolicy, cap_jobs, load
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.artifacts import SwapAfterHashing, publish_copy
from training.onnx_export import PROBA_TOLERANCE, generated_rows
from training.run import train
from training.spec import shipped_spec

RECORDS = [
    {
        "tenure_months": 3,
        "monthly_charges": 99.0,
        "support_calls": 5,
        "senior_citizen": True,
        "contract": "month-to-month",
        "internet_service": "fiber",
        "payment_method": "electronic-check",
    },
    {
        "tenure_months": 60,
        "monthly_charges": 20.25,
        "support_calls": 0,
        "senior_citizen": False,
        "contract": "two-year",
        "internet_service": "none",
        "payment_method": "credit-card",
    },
]


def test_dataframe_model_round_trip(trained_store: ModelStore) -> None:
    manifest, estimator = trained_store.load_model("churn", 1)
    encoded = RowEncoder(manifest).records(RECORDS)
    assert encoded.dtype == np.float64
    assert encoded.shape == (2, len(manifest.features))
    loaded = LoadedModel(manifest, estimator, "sklearn")
    frame = loaded.model_input(encoded)
    assert list(frame.columns) == manifest.feature_names
    assert frame["contract"].tolist() == ["month-to-month", "two-year"]
    expected_frame = pd.DataFrame(RECORDS).astype(
        {"tenure_months": float, "support_calls": float, "senior_citizen": float}
    )
    result = loaded.predict(encoded, True)
    assert result.predictions.tolist() == estimator.predict(expected_frame).tolist()
    assert result.probabilities is not None
    assert np.array_equal(result.probabilities, estimator.predict_proba(expected_frame))


def test_positional_rows_encode_like_records(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("churn", 1)
    encoder = RowEncoder(manifest)
    positional = encoder.rows([tuple(r.values()) for r in RECORDS])
    assert np.array_equal(positional, encoder.records(RECORDS))


def test_ndarray_model_gets_the_float_array(trained_store: ModelStore) -> None:
    manifest, estimator = trained_store.load_model("iris", 1)
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    loaded = LoadedModel(manifest, estimator, "sklearn")
    assert loaded.model_input(rows) is rows
    assert loaded.predict(rows, False).predictions.tolist() == estimator.predict(rows).tolist()


def test_a_classification_model_without_classes_still_loads(trained_store: ModelStore) -> None:
    # A spec may evaluate any estimator as a classifier, e.g. a regressor that predicts labels.
    manifest = trained_store.manifest("breast_cancer", 1)
    rows = np.random.default_rng(4).uniform(0, 10, size=(20, len(manifest.features)))
    estimator = KNeighborsRegressor(n_neighbors=1).fit(rows, np.arange(20) % 2)
    loaded = LoadedModel(manifest, estimator, "sklearn")
    assert loaded.labels is None
    assert loaded.predict(rows, False).predictions.tolist() == estimator.predict(rows).tolist()


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes", "churn"])
def test_load_prefers_onnx_when_parity_passed(trained_store: ModelStore, name: str) -> None:
    loaded = load(trained_store, name, 1, RuntimePolicy())
    assert loaded.runtime == "onnx"
    forced = load(trained_store, name, 1, RuntimePolicy(prefer_onnx=False))
    assert forced.runtime == "sklearn"
    per_model = load(trained_store, name, 1, RuntimePolicy(sklearn_models=frozenset({name})))
    assert per_model.runtime == "sklearn"


def test_onnx_and_sklearn_runtimes_agree_on_encoded_rows(trained_store: ModelStore) -> None:
    manifest = trained_store.manifest("churn", 1)
    encoded = RowEncoder(manifest).records(RECORDS * 50)
    onnx = load(trained_store, "churn", 1, RuntimePolicy())
    sklearn = load(trained_store, "churn", 1, RuntimePolicy(prefer_onnx=False))
    assert isinstance(onnx.model_input(encoded), dict)  # no DataFrame on the ONNX path
    a, b = onnx.predict(encoded, True), sklearn.predict(encoded, True)
    assert a.predictions.tolist() == b.predictions.tolist()
    assert a.probabilities is not None
    assert b.probabilities is not None
    assert np.allclose(a.probabilities, b.probabilities, rtol=0, atol=PROBA_TOLERANCE)
    assert onnx.predict(encoded, False).probabilities is None


def test_model_without_onnx_file_is_served_by_sklearn(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    spec = shipped_spec("diabetes").with_overrides(
        {"name": "custom", "estimator": {"class": "tests.training.custom_estimators.SquaredRidge"}}
    )
    train(spec, store, echo=lambda _: None)
    assert load(store, "custom", 1, RuntimePolicy()).runtime == "sklearn"


def test_onnx_threads_never_oversubscribe() -> None:
    cores = os.cpu_count() or 1
    for workers in (1, 2, cores):
        for size in (1, 2, 4):
            threads = Settings(workers=workers, pool_size=size).runtime_policy().onnx_threads
            assert threads >= 1
            computing = workers * size  # pool workers on the box
            assert computing * threads <= max(computing, cores - workers)
    assert Settings(onnx_threads=3).runtime_policy().onnx_threads == 3
    assert Settings(runtime="sklearn").runtime_policy().prefer_onnx is False


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "churn"])
def test_onnx_labels_are_the_graphs_labels_as_shared_class_values(
    trained_store: ModelStore, name: str
) -> None:
    """Labels come from the class index behind the graph's label (or from the argmax of the
    probabilities where parity was proven that way), never as one new string per row: the
    same values as the graph's own label output, each row holding one of the classes."""
    import onnxruntime

    manifest = trained_store.manifest(name, 1)
    frame = generated_rows(manifest.features, 3000, seed=11)
    encoded = RowEncoder(manifest).rows([tuple(r) for r in frame.itertuples(index=False)])
    loaded = load(trained_store, name, 1, RuntimePolicy())
    assert loaded.runtime == "onnx"
    path = trained_store.onnx_path(manifest)
    assert path is not None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_labels, graph_proba = session.run(
        None, loaded.predictor._feed(loaded.model_input(encoded))
    )
    both = loaded.predict(encoded, True)
    labels_only = loaded.predict(encoded, False)
    assert labels_only.probabilities is None
    assert both.predictions.tolist() == labels_only.predictions.tolist()
    classes = manifest.target.classes or []
    assert manifest.onnx is not None
    if manifest.onnx.labels_from_probabilities:  # ties broken as scikit-learn breaks them
        expected = np.asarray(classes, dtype=object)[np.argmax(graph_proba, axis=1)]
    else:
        expected = np.asarray(graph_labels).ravel()
    assert both.predictions.tolist() == expected.tolist()
    assert both.probabilities is not None
    assert np.array_equal(both.probabilities, np.asarray(graph_proba, dtype=np.float64))
    assert len({id(label) for label in both.predictions.tolist()}) <= len(classes)


def test_onnx_label_output_is_used_when_the_graph_has_no_class_index() -> None:
    """A classifier graph whose label is not looked up in its classes keeps its label output."""
    from onnx import TensorProto, helper

    from serving.execution.onnx_runtime import OnnxIO, OnnxModel
    from serving.store import Feature, FeatureKind, Task

    x = helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, 2])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    proba = helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [None, 2])
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["X"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["X"], ["label"], axis=1, keepdims=0),
        ],
        "g",
        [x],
        [label, proba],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    features = [Feature(name=n, kind=FeatureKind.NUMERIC) for n in ("a", "b")]
    signature = OnnxIO(Task.CLASSIFICATION, "ndarray", features, [0, 1])
    onnx_model = OnnxModel(signature, model.SerializeToString())
    rows = np.array([[0.0, 1.0], [3.0, -1.0]])
    labels, probabilities = onnx_model.predict_both(rows)
    assert labels.tolist() == [1, 0]
    assert labels.dtype.kind == "i"
    assert probabilities is not None
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_sklearn_estimators_get_the_thread_budget_of_the_policy(tmp_path: Path) -> None:
    """A model fitted with n_jobs=-1 predicts with the policy's threads, not every core."""
    store = ModelStore(tmp_path)
    spec = shipped_spec("diabetes").with_overrides(
        {
            "name": "threads",
            "estimator": {"class": "tests.training.custom_estimators.ThreadReportingRidge"},
        }
    )
    train(spec, store, echo=lambda _: None)
    _, fitted = store.load_model("threads", 1)
    assert fitted.get_params(deep=True)["model__n_jobs"] == -1
    for threads in (1, 2):
        loaded = load(store, "threads", 1, RuntimePolicy(onnx_threads=threads))
        assert loaded.runtime == "sklearn"
        assert loaded.predictor.get_params(deep=True)["model__n_jobs"] == threads
    cap_jobs(object(), 1)  # not an estimator: left alone


def test_a_forest_with_probabilities_predicts_in_one_pass_with_the_same_answers(
    trained_store: ModelStore,
) -> None:
    """scikit-learn's forest predict is the argmax of its predict_proba: asked for both, the
    runtime runs the trees once, and gives exactly what predict and predict_proba give."""
    import sklearn.ensemble

    from serving.couplings.sklearn_forest import votes_by_probabilities as _votes_by_probabilities

    manifest, estimator = trained_store.load_model("breast_cancer", 1)
    rows = np.random.default_rng(5).uniform(0, 60, size=(500, len(manifest.features)))
    loaded = load(trained_store, "breast_cancer", 1, RuntimePolicy(prefer_onnx=False))
    calls: list[int] = []
    forest = loaded.predictor[-1]
    original = forest.predict_proba

    def counted(X: object) -> object:
        calls.append(1)
        return original(X)

    forest.predict_proba = counted
    result = loaded.predict(rows, True)
    assert len(calls) == 1
    assert result.predictions.tolist() == estimator.predict(rows).tolist()
    assert result.probabilities is not None
    assert np.array_equal(result.probabilities, estimator.predict_proba(rows))
    assert loaded.predict(rows, False).predictions.tolist() == estimator.predict(rows).tolist()
    for name in ("iris", "churn"):  # logistic regressions decide by their own predict
        assert not _votes_by_probabilities(trained_store.load_model(name, 1)[1])

    class OwnVote(sklearn.ensemble.RandomForestClassifier):  # type: ignore[misc]
        def predict(self, X: object) -> object:
            return super().predict(X)

    labels = estimator.predict(rows)
    plain = sklearn.ensemble.RandomForestClassifier(n_estimators=2).fit(rows, labels)
    assert _votes_by_probabilities(plain)
    assert not _votes_by_probabilities(OwnVote(n_estimators=2).fit(rows, labels))


def test_a_forest_graph_writes_class_positions_and_answers_as_its_text_labels(
    trained_store: ModelStore,
) -> None:
    """A tree classifier whose labels come from the graph (not from the probabilities' argmax,
    as in stores trained before that was recorded): the op is made to write class positions
    instead of text, and the labels are exactly the graph's own."""
    from dataclasses import replace

    import onnxruntime

    from serving.execution.onnx_runtime import OnnxIO, OnnxModel

    manifest = trained_store.manifest("breast_cancer", 1)
    path = trained_store.onnx_path(manifest)
    assert path is not None
    signature = replace(OnnxIO.of(manifest), labels_from_probabilities=False)
    model = OnnxModel(signature, path.read_bytes())
    frame = generated_rows(manifest.features, 3000, seed=12)
    rows = RowEncoder(manifest).rows([tuple(r) for r in frame.itertuples(index=False)])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_labels, graph_proba = session.run(None, {"X": rows})
    labels, probabilities = model.predict_both(rows)
    assert labels.tolist() == np.asarray(graph_labels).tolist()
    assert probabilities is not None
    assert np.array_equal(probabilities, np.asarray(graph_proba, dtype=np.float64))
    assert len({id(label) for label in labels.tolist()}) <= 2
    assert model.predict_both(rows, want_probabilities=False)[0].tolist() == labels.tolist()


def test_an_onnx_file_swapped_after_hashing_is_never_read(
    trained_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.store.artifact

    store = ModelStore(tmp_path / "s", signing_key=b"k1")
    version = publish_copy(store, "iris", trained_store, "iris", 1)
    manifest = store.manifest("iris", version)
    path = store.onnx_path(manifest)
    assert path is not None
    hook = SwapAfterHashing(path, b"not an onnx graph")
    monkeypatch.setattr(serving.store.artifact, "hashlib", hook)
    loaded = load(store, "iris", version, RuntimePolicy())
    assert hook.swapped == 1
    assert loaded.runtime == "onnx"  # the verified graph, not a fallback after reading junk
    rows = np.array([[5.1, 3.5, 1.4, 0.2]])
    assert loaded.predict(rows, False).predictions.tolist() == ["setosa"]
