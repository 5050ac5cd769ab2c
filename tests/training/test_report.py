"""The report folder: plots a reader expects per task, importances named by input features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.run import TrainResult, train
from training.spec import load_spec, shipped_spec


def _report(result: TrainResult) -> Path:
    return result.path / "report"


def test_binary_classifier_report_has_roc_with_auc_pr_and_calibration(
    store: ModelStore,
) -> None:
    spec = shipped_spec("breast_cancer").with_overrides(
        {"estimator": {"params": {"n_estimators": 10}}}
    )
    result = train(spec, store, echo=quiet)
    report = _report(result)

    for plot in ("roc.png", "precision_recall.png", "calibration.png", "confusion_matrix.png"):
        assert (report / plot).is_file(), plot
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0.9 < metrics["roc_auc"] <= 1.0
    card = (report / "model_card.md").read_text()
    assert f"| roc_auc | {metrics['roc_auc']:.4f} |" in card
    names = result.manifest.feature_names
    importance = json.loads((report / "importance.json").read_text())
    assert list(importance["permutation"]["importances"]) == names
    assert list(importance["model"]["importances"]) == names


def test_regressor_report_has_predicted_vs_actual_and_residuals(store: ModelStore) -> None:
    report = _report(train(shipped_spec("diabetes"), store, echo=quiet))

    assert (report / "predicted_vs_actual.png").is_file()
    assert (report / "residuals.png").is_file()
    assert not (report / "roc.png").exists()
    importance = json.loads((report / "importance.json").read_text())
    assert "rmse" in importance["permutation"]["kind"]


def _signal_and_noise(tmp_path: Path, rows: int = 400) -> Path:
    """``region`` decides the label (a categorical: several one-hot columns); ``income`` is
    pure noise with many distinct values (what impurity importance over-rates)."""
    rng = np.random.default_rng(0)
    region = rng.choice(["north", "south", "east", "west"], rows)
    income = rng.normal(50_000, 15_000, rows).round(2)
    age = rng.integers(18, 80, rows)
    flip = rng.random(rows) < 0.05
    label = np.where((region == "south") | (region == "east"), "yes", "no")
    label = np.where(flip, np.where(label == "yes", "no", "yes"), label)
    csv = tmp_path / "customers.csv"
    lines = ["income,region,age,bought"]
    lines += [f"{i},{r},{a},{y}" for i, r, a, y in zip(income, region, age, label, strict=True)]
    csv.write_text("\n".join(lines) + "\n")
    spec = tmp_path / "customers.toml"
    spec.write_text(
        'name = "customers"\n'
        f'[dataset]\npath = "{csv}"\ntarget = "bought"\n'
        '[features]\nkinds = { age = "integer" }\n'
        '[estimator]\nclass = "sklearn.ensemble.RandomForestClassifier"\n'
        "params = { n_estimators = 30, random_state = 0, n_jobs = 1 }\n"
        "[preprocessing]\none_hot = true\n"
    )
    return spec


def test_permutation_importance_names_input_features_and_ranks_the_signal_first(
    store: ModelStore, tmp_path: Path
) -> None:
    result = train(load_spec(_signal_and_noise(tmp_path)), store, echo=quiet)
    report = _report(result)
    importance = json.loads((report / "importance.json").read_text())

    permutation = importance["permutation"]["importances"]
    assert set(permutation) == {"income", "region", "age"}
    assert max(permutation, key=permutation.__getitem__) == "region"
    assert permutation["region"] > 10 * max(abs(permutation["income"]), 0.01)
    # The impurity view is summed back onto the inputs too: no transformer column names.
    own = importance["model"]["importances"]
    assert set(own) == {"income", "region", "age"}
    assert sum(own.values()) == pytest.approx(1.0)
    card = (report / "model_card.md").read_text()
    assert "__" not in card.split("## What the model relies on")[1].split("## Plots")[0]
    first_row = card.split("| feature | importance |\n|---|---|\n")[1].splitlines()[0]
    assert first_row.startswith("| `region` |")
    assert (report / "feature_importances.png").is_file()
    assert (report / "model_importances.png").is_file()


def test_roc_curves_are_one_binary_curve_or_one_per_class() -> None:
    from training.evaluate import Evaluation
    from training.report import _one_vs_rest

    y = np.array(["no", "yes", "yes", "no"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    binary = _one_vs_rest(Evaluation({}, y, y, proba, ["no", "yes"]))
    assert [(name, list(pos)) for name, pos, _ in binary] == [("yes", [False, True, True, False])]

    y3 = np.array(["a", "b", "c"])
    three = _one_vs_rest(Evaluation({}, y3, y3, np.eye(3), ["a", "b", "c"]))
    assert [name for name, _, _ in three] == ["a vs rest", "b vs rest", "c vs rest"]


def test_card_shows_the_baseline_and_cross_validation_of_the_run(store: ModelStore) -> None:
    result = train(shipped_spec("iris"), store, echo=quiet)
    m = result.manifest
    card = (_report(result) / "model_card.md").read_text()

    section = card.split("## Baseline and cross-validation")[1].split("##")[0]
    primary = m.primary_metric
    row = next(line for line in section.splitlines() if line.startswith(f"| {primary} |"))
    assert f"{m.metrics[f'cv_{primary}_mean']:.4f} ± {m.metrics[f'cv_{primary}_std']:.4f}" in row
    assert f"| {m.metrics[f'baseline_{primary}']:.4f} (cross-validation " in row
    holdout = card.split("## Holdout metrics")[1].split("##")[0]
    assert "cv_" not in holdout
    assert "baseline_" not in holdout
