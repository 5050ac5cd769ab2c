from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from serving.store import FeatureKind, ModelStore, Task, sha256_file
from tests.training.conftest import quiet
from training.datasets import load_dataset
from training.run import train
from training.spec import shipped_names, shipped_spec


def test_shipped_specs_cover_the_promised_models() -> None:
    assert {"iris", "breast_cancer", "diabetes", "churn"} <= set(shipped_names())


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes", "churn"])
def test_each_shipped_spec_trains_end_to_end(store: ModelStore, name: str) -> None:
    result = train(shipped_spec(name), store, echo=quiet)

    assert result.version == 1
    assert result.promoted
    assert store.production(name) == 1
    manifest = store.verify(name, 1)
    vdir = store.version_path(name, 1)
    report = vdir / "report"
    assert (report / "metrics.json").is_file()
    card = (report / "model_card.md").read_text()
    assert f"# Model card: {name}" in card
    plots = sorted(p.name for p in report.glob("*.png"))
    if manifest.task == Task.CLASSIFICATION:
        assert {"confusion_matrix.png", "roc.png"} <= set(plots)
        holdout = {"accuracy", "f1_macro", "roc_auc"}
    else:
        assert {"predicted_vs_actual.png", "residuals.png"} <= set(plots)
        holdout = {"rmse", "mae", "r2"}
    # Holdout figures, their mean and spread over the folds, and the baseline's.
    expected = holdout | {f"baseline_{m}" for m in holdout}
    expected |= {
        f"{p}{m}_{s}" for p in ("cv_", "baseline_cv_") for m in holdout for s in ("mean", "std")
    }
    assert set(manifest.metrics) == expected
    assert manifest.spec["outcome"]["folds"] == 5
    assert "feature_importances.png" in plots
    for plot in plots:
        assert f"]({plot})" in card  # the card links every plot
    holdout_metrics = {k: v for k, v in manifest.metrics.items() if k in holdout}
    assert json.loads((report / "metrics.json").read_text()) == pytest.approx(holdout_metrics)
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert len(evaluation["folds"]["candidate"][manifest.primary_metric]) == 5
    assert "report/evaluation.json" in manifest.files


def test_manifest_records_schema_environment_and_hashes(store: ModelStore) -> None:
    train(shipped_spec("churn"), store, echo=quiet)
    m = store.manifest("churn", 1)
    vdir = store.version_path("churn", 1)

    assert m.name == "churn"
    assert m.version == 1
    assert m.task == Task.CLASSIFICATION
    assert m.input_format == "dataframe"
    kinds = {f.name: f.kind for f in m.features}
    assert kinds == {
        "tenure_months": FeatureKind.INTEGER,
        "monthly_charges": FeatureKind.NUMERIC,
        "support_calls": FeatureKind.INTEGER,
        "senior_citizen": FeatureKind.BOOLEAN,
        "contract": FeatureKind.CATEGORICAL,
        "internet_service": FeatureKind.CATEGORICAL,
        "payment_method": FeatureKind.CATEGORICAL,
    }
    contract = next(f for f in m.features if f.name == "contract")
    assert contract.categories == ["month-to-month", "one-year", "two-year"]
    assert contract.example in contract.categories
    tenure = next(f for f in m.features if f.name == "tenure_months")
    assert tenure.min == 0
    assert tenure.max == 72
    assert tenure.mean is not None
    assert tenure.std is not None
    assert tenure.std > 0
    assert isinstance(tenure.example, int)
    assert m.target.name == "churn"
    assert m.target.classes == ["no", "yes"]
    assert m.primary_metric == "roc_auc"
    assert m.higher_is_better
    assert m.spec["estimator"]["class"] == "sklearn.linear_model.LogisticRegression"
    assert len(m.data_fingerprint) == 64
    assert m.environment.sklearn
    assert m.environment.numpy
    assert m.environment.joblib
    assert m.n_train_rows + m.n_test_rows == 2000
    # Every file in the version folder (but the manifest) is hashed, and the hashes are right.
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {
        "manifest.json"
    }
    assert set(m.files) == on_disk
    for rel, digest in m.files.items():
        assert sha256_file(vdir / rel) == digest


def test_numeric_only_models_take_float_arrays(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    manifest, model = store.load_model("iris", 1)
    assert manifest.input_format == "ndarray"
    assert manifest.feature_names == [
        "sepal_length_cm",
        "sepal_width_cm",
        "petal_length_cm",
        "petal_width_cm",
    ]
    assert manifest.target.classes == ["setosa", "versicolor", "virginica"]
    row = np.array([[5.1, 3.5, 1.4, 0.2]])
    assert model.predict(row).tolist() == ["setosa"]


def test_same_spec_and_seed_give_identical_holdout_predictions(tmp_path) -> None:
    spec = shipped_spec("breast_cancer").with_overrides(
        {"estimator": {"params": {"n_estimators": 20}}}
    )
    first = train(spec, ModelStore(tmp_path / "a"), echo=quiet)
    second = train(spec, ModelStore(tmp_path / "b"), echo=quiet)

    assert first.manifest.data_fingerprint == second.manifest.data_fingerprint
    assert first.manifest.metrics == second.manifest.metrics
    data = load_dataset(spec)
    _, X_test, _, _ = train_test_split(
        data.X,
        data.y,
        test_size=spec.split.test_size,
        random_state=spec.split.seed,
        stratify=data.y,
    )
    a = joblib.load(first.path / "model.joblib")
    b = joblib.load(second.path / "model.joblib")
    X = X_test.to_numpy(dtype=np.float64)
    assert a.predict(X).tolist() == b.predict(X).tolist()
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_a_different_seed_changes_the_split(tmp_path) -> None:
    spec = shipped_spec("iris")
    a = train(spec, ModelStore(tmp_path / "a"), echo=quiet)
    b = train(spec.with_overrides({"split": {"seed": 7}}), ModelStore(tmp_path / "b"), echo=quiet)
    assert a.manifest.features != b.manifest.features  # training-split statistics differ


def test_progress_names_each_stage_with_its_duration(store: ModelStore) -> None:
    lines: list[str] = []
    train(shipped_spec("iris"), store, echo=lines.append)
    for stage in ("load", "fit", "cross-validate", "evaluate", "baseline", "gate", "export"):
        assert any(line.strip().startswith(f"{stage}: done in") for line in lines), stage
