"""Training writes each version's explanation background (hashed like every file), records it
in the manifest, and plots the holdout's mean absolute contributions on the model card; a
model no exact method explains is trained and stored all the same, with the reason."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from serving.explain import Background, Explainer
from serving.store import EXPLAIN_FILE, IntegrityError, ModelStore
from tests.training.conftest import quiet
from training.fitting import load_split
from training.run import resolve_task, train
from training.spec import parse_spec, shipped_spec


@pytest.mark.parametrize(
    ("name", "method", "space"),
    [
        ("iris", "linear", "logit"),
        ("breast_cancer", "tree", "probability"),
        ("diabetes", "linear", "value"),
        ("churn", "linear", "log-odds"),
    ],
)
def test_every_shipped_model_gets_a_hashed_background_and_a_card_plot(
    store: ModelStore, name: str, method: str, space: str
) -> None:
    spec = shipped_spec(name)
    if name == "breast_cancer":
        spec = spec.with_overrides({"estimator": {"params": {"n_estimators": 10}}})
    train(spec, store, echo=quiet)
    manifest = store.verify(name, 1)
    assert manifest.explain is not None
    assert (manifest.explain.status, manifest.explain.method) == ("ok", method)
    assert manifest.explain.space == space
    assert manifest.explainable
    assert EXPLAIN_FILE in manifest.files
    verified = store.read_version(name, 1, explain=True)
    assert verified.background is not None
    background = Background.from_json(json.loads(verified.background))
    assert background.feature_names == manifest.feature_names
    report = store.version_path(name, 1) / "report"
    assert (report / "contributions.png").stat().st_size > 1000
    assert "](contributions.png)" in (report / "model_card.md").read_text()


def test_the_card_ranks_features_by_their_holdout_contributions(store: ModelStore) -> None:
    """The plotted figures are the mean absolute contributions over the holdout rows, as the
    explainer gives them (checked here against a direct computation)."""
    from training.explanations import holdout_summary

    spec = shipped_spec("diabetes")
    train(spec, store, echo=quiet)
    verified = store.read_version("diabetes", 1, explain=True)
    assert verified.background is not None
    background = Background.from_json(json.loads(verified.background))
    pipeline = verified.estimator()
    split = load_split(spec, resolve_task(spec), quiet)
    X = split.model_input(split.X_test)
    summary = holdout_summary(pipeline, background, X)
    # Ridge through a scaler: contribution = coef x (scaled value - scaled training mean).
    scaler, ridge = pipeline[:-1], pipeline[-1]
    scaled = scaler.transform(X)
    centred = scaled - scaler.transform(split.model_input(split.X_train)).mean(axis=0)
    by_hand = np.abs(centred * ridge.coef_).mean(axis=0)
    assert list(summary.values) == manifest_names(store)
    np.testing.assert_allclose(list(summary.values.values()), by_hand, rtol=1e-9)
    _, contributions = Explainer(pipeline, background).explain(X)
    assert contributions.shape == (len(X), len(by_hand), 1)


def manifest_names(store: ModelStore) -> list[str]:
    return store.manifest("diabetes", 1).feature_names


def test_an_unsupported_estimator_is_stored_with_the_reason(store: ModelStore) -> None:
    data = shipped_spec("iris").model_dump(mode="json", by_alias=True)
    data["estimator"] = {"class": "sklearn.neighbors.KNeighborsClassifier", "params": {}}
    data["base_dir"] = shipped_spec("iris").base_dir
    result = train(parse_spec(data, origin="knn"), store, echo=quiet)
    manifest = store.verify("iris", result.version)
    assert manifest.explain is not None
    assert manifest.explain.status == "unsupported"
    assert manifest.explain.reason is not None
    assert "KNeighborsClassifier" in manifest.explain.reason
    assert not manifest.explainable
    assert not (store.version_path("iris", result.version) / EXPLAIN_FILE).exists()
    report = store.version_path("iris", result.version) / "report"
    assert not (report / "contributions.png").exists()


def test_a_changed_background_fails_verification(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    path = store.version_path("iris", 1) / EXPLAIN_FILE
    document = json.loads(path.read_text())
    document["base_values"][0] += 1.0
    path.write_text(json.dumps(document))
    with pytest.raises(IntegrityError, match=r"explain\.json"):
        store.read_version("iris", 1, explain=True)


def test_a_tree_model_trained_without_shap_is_stored_with_the_reason(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shap is an optional extra: without it a forest still trains and serves; only its
    explanations are missing, and the manifest says why."""
    monkeypatch.setitem(sys.modules, "shap", None)  # import shap now raises ImportError
    spec = shipped_spec("breast_cancer").with_overrides(
        {"estimator": {"params": {"n_estimators": 5}}}
    )
    result = train(spec, store, echo=quiet)
    manifest = store.verify("breast_cancer", result.version)
    assert manifest.explain is not None
    assert manifest.explain.status == "unsupported"
    assert manifest.explain.reason is not None
    assert "shap" in manifest.explain.reason
    assert "retrain" in manifest.explain.reason
