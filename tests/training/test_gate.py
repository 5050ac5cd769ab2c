from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.gate import Comparison, holdout_only, paired
from training.run import train
from training.spec import Spec, load_spec, parse_spec, shipped_spec

# A deliberately weak iris model: heavy regularisation drops the macro F1 far below production.
WEAK = {"estimator": {"params": {"C": 0.0005}}}


def _iris_with(estimator: str, params: dict[str, object]) -> Spec:
    data = shipped_spec("iris").to_dict()
    data["estimator"] = {"class": estimator, "params": params}
    return parse_spec(data, origin="iris variant")


# A steady but poor production model: one split, so it never tells versicolor from virginica.
STUMP: tuple[str, dict[str, object]] = (
    "sklearn.tree.DecisionTreeClassifier",
    {"max_depth": 1, "random_state": 0},
)


def _noise_csv(tmp_path: Path, target: str) -> Path:
    """Pure-noise features: nothing in them predicts the target."""
    rng = np.random.default_rng(0)
    rows = ["a,b,c,y"]
    for _ in range(150):
        a, b, c = rng.normal(size=3)
        y = ("yes" if rng.random() < 0.7 else "no") if target == "class" else rng.normal()
        rows.append(f"{a:.6f},{b:.6f},{c:.6f},{y if target == 'class' else f'{y:.6f}'}")
    path = tmp_path / "noise.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _spec(tmp_path: Path, csv: Path, estimator: str, params: str = "{}") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(
        f'name = "noise"\n[dataset]\npath = "{csv}"\ntarget = "y"\n'
        f'[estimator]\nclass = "{estimator}"\nparams = {params}\n'
    )
    return path


def test_identical_retrain_makes_no_new_version_unless_forced(store: ModelStore) -> None:
    spec = shipped_spec("iris")
    train(spec, store, echo=quiet)
    lines: list[str] = []
    again = train(spec, store, echo=lines.append)
    assert again.identical
    assert again.version == 1
    assert not again.promoted
    assert store.versions("iris") == [1]
    assert any("identical to production v1" in line for line in lines)

    forced = train(spec, store, force_promote=True, echo=quiet)
    assert not forced.identical
    assert forced.version == 2
    assert store.production("iris") == 2


def test_a_model_no_better_than_its_baseline_is_never_promoted(store: ModelStore) -> None:
    result = train(_iris_with("sklearn.dummy.DummyClassifier", {}), store, echo=quiet)
    assert result.version == 1
    assert not result.promoted
    assert store.production("iris") is None
    assert "not better than the trivial baseline" in result.decision.reason
    assert result.decision.baseline is not None
    assert not result.decision.baseline.better
    metrics = result.manifest.metrics
    assert {"baseline_f1_macro", "baseline_cv_f1_macro_mean", "baseline_cv_f1_macro_std"} <= set(
        metrics
    )


def test_noise_classifier_below_its_baseline_is_refused(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            _noise_csv(tmp_path, "class"),
            "sklearn.ensemble.RandomForestClassifier",
            "{ n_estimators = 20, random_state = 0 }",
        )
    ).with_overrides({"evaluation": {"primary_metric": "accuracy"}})
    result = train(spec, store, echo=quiet)
    assert not result.promoted
    assert store.production("noise") is None
    assert "not better than the trivial baseline" in result.decision.reason


def test_negative_r2_regressor_is_refused(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            _noise_csv(tmp_path, "number"),
            "sklearn.tree.DecisionTreeRegressor",
            "{ random_state = 0 }",
        )
    )
    result = train(spec, store, echo=quiet)
    assert result.manifest.metrics["cv_r2_mean"] < 0
    assert not result.promoted
    assert store.production("noise") is None


def test_worse_version_is_stored_not_promoted(store: ModelStore) -> None:
    good = train(shipped_spec("iris"), store, echo=quiet)
    weak = train(shipped_spec("iris").with_overrides(WEAK), store, echo=quiet)

    assert weak.manifest.primary_score < good.manifest.primary_score - 0.01
    assert not weak.promoted
    assert store.versions("iris") == [1, 2]
    assert store.production("iris") == 1
    assert "not better than" in weak.decision.reason
    table = weak.decision.comparison(weak.manifest)
    assert "cv_f1_macro_mean" in table
    assert "v1 (production)" in table
    assert "v2 (new)" in table


def test_within_fold_noise_of_production_is_not_promoted(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    nudged = train(
        shipped_spec("iris").with_overrides({"estimator": {"params": {"C": 1.2}}}),
        store,
        echo=quiet,
    )
    versus = nudged.decision.versus_production
    assert versus is not None
    assert "paired over 5 folds" in versus.method  # production refitted on the same folds
    assert abs(versus.difference) <= versus.noise
    assert not nudged.promoted
    assert store.production("iris") == 1


def test_clearly_better_is_promoted_and_tolerance_raises_the_bar(store: ModelStore) -> None:
    train(_iris_with(*STUMP), store, force_promote=True, echo=quiet)
    strict = shipped_spec("iris").with_overrides({"evaluation": {"tolerance": 0.9}})
    refused = train(strict, store, echo=quiet)
    assert not refused.promoted
    assert refused.decision.versus_production is not None
    assert refused.decision.versus_production.difference > refused.decision.versus_production.noise
    assert "margin 0.9" in refused.decision.reason
    assert refused.decision.versus_production.margin == 0.9  # the spec's tolerance, as given

    better = train(shipped_spec("iris"), store, echo=quiet)
    assert better.promoted
    assert store.production("iris") == better.version


def test_force_promotes_a_worse_version(store: ModelStore) -> None:
    train(shipped_spec("iris"), store, echo=quiet)
    weak = train(shipped_spec("iris").with_overrides(WEAK), store, force_promote=True, echo=quiet)
    assert weak.promoted
    assert store.production("iris") == 2
    assert weak.manifest.spec["outcome"]["forced"] is True


def test_lower_is_better_metric_for_regressors(store: ModelStore) -> None:
    train(shipped_spec("diabetes"), store, echo=quiet)
    worse = shipped_spec("diabetes").with_overrides({"estimator": {"params": {"alpha": 5000.0}}})
    result = train(worse, store, echo=quiet)
    assert result.manifest.primary_metric == "rmse"
    assert not result.promoted
    assert store.production("diabetes") == 1


def test_paired_rule_needs_more_than_the_corrected_fold_noise() -> None:
    steady = paired(
        "p",
        "accuracy",
        [0.9, 0.91, 0.9, 0.92, 0.9],
        [0.8, 0.82, 0.8, 0.81, 0.8],
        higher_is_better=True,
        margin=0.0,
        significance=0.05,
        validate_to_fit=0.25,
    )
    assert steady.better
    jumpy = paired(
        "p",
        "accuracy",
        [0.99, 0.7, 0.95, 0.72, 0.98],
        [0.8, 0.9, 0.8, 0.9, 0.8],
        higher_is_better=True,
        margin=0.0,
        significance=0.05,
        validate_to_fit=0.25,
    )
    assert jumpy.difference > 0
    assert not jumpy.better
    lower = paired(
        "p",
        "rmse",
        [1.0, 1.1, 1.0],
        [2.0, 2.1, 2.0],
        higher_is_better=False,
        margin=0.5,
        significance=0.05,
        validate_to_fit=0.5,
    )
    assert lower.difference == 1.0
    assert lower.better


def _steady(higher_is_better: bool, margin: float) -> Comparison:
    """Five folds that all differ by the same 0.03 (better for the candidate): no fold noise,
    so the margin alone decides."""
    sign = 1.0 if higher_is_better else -1.0
    return paired(
        "production v1",
        "accuracy" if higher_is_better else "rmse",
        [0.8 + sign * 0.03] * 5,
        [0.8] * 5,
        higher_is_better=higher_is_better,
        margin=margin,
        significance=0.05,
        validate_to_fit=0.25,
    )


def test_the_tolerance_is_the_exact_margin_over_production() -> None:
    for higher in (True, False):
        gain = _steady(higher, 0.0)
        assert gain.noise == 0.0
        assert gain.difference == pytest.approx(0.03)
        assert _steady(higher, gain.difference - 1e-6).better  # just inside
        assert not _steady(higher, gain.difference).better  # the bar is strict
        assert not _steady(higher, gain.difference + 1e-6).better  # just outside
    for higher in (True, False):  # the same bar without folds
        sign = 1.0 if higher else -1.0
        inside = holdout_only(
            "p", "m", 0.8 + sign * 0.03, 0.8, higher_is_better=higher, margin=0.0299
        )
        outside = holdout_only(
            "p", "m", 0.8 + sign * 0.03, 0.8, higher_is_better=higher, margin=0.0301
        )
        assert (inside.better, outside.better) == (True, False)
