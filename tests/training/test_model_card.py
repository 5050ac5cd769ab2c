"""The model card states what the service does with inputs; each statement is checked here
against the service's own code (request validation, out-of-range warnings, bulk scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from serving.codecs.schemas import build_request_model
from serving.core.dataplane import RowEncoder
from serving.observe.drift import ModelDrift
from serving.store import Manifest, ModelStore
from tests.training.conftest import quiet
from training import model_card
from training.run import train
from training.score import score_csv
from training.spec import load_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelStore, Manifest, str]:
    """A model with a categorical feature and a numeric one that had missing values."""
    tmp = tmp_path_factory.mktemp("card")
    rng = np.random.default_rng(1)
    rows = 120
    lines = ["plan,usage,calls,left"]
    for i in range(rows):
        usage = "" if i % 10 == 0 else f"{rng.uniform(0, 100):.1f}"
        plan = ["basic", "plus", "pro"][i % 3]
        lines.append(f"{plan},{usage},{i % 7},{'yes' if i % 2 else 'no'}")
    csv = tmp / "plans.csv"
    csv.write_text("\n".join(lines) + "\n")
    spec = tmp / "plans.toml"
    spec.write_text(
        f'name = "plans"\n[dataset]\npath = "{csv}"\ntarget = "left"\n'
        '[features]\nkinds = { calls = "integer" }\nallow_missing = ["usage"]\n'
        '[estimator]\nclass = "sklearn.linear_model.LogisticRegression"\n'
        "[preprocessing]\none_hot = true\n"
    )
    store = ModelStore(tmp / "store")
    result = train(load_spec(spec), store, echo=quiet)
    card = (result.path / "report" / "model_card.md").read_text()
    return store, result.manifest, card


def _validate(manifest: Manifest, instance: dict[str, Any]) -> bool:
    """Whether the service's request model (serving/codecs/schemas.py) accepts the row."""
    request = build_request_model(manifest, max_rows=10)
    try:
        request.model_validate({"instances": [instance]})
    except ValidationError:
        return False
    return True


GOOD = {"plan": "plus", "usage": 50.0, "calls": 3}


def test_card_says_unseen_categories_are_refused_and_the_service_refuses_them(
    trained: tuple[ModelStore, Manifest, str], tmp_path: Path
) -> None:
    store, manifest, card = trained
    assert model_card.UNSEEN_CATEGORY_RULE in card
    assert "ignored by the one-hot encoder" not in card

    assert _validate(manifest, GOOD)
    assert not _validate(manifest, {**GOOD, "plan": "enterprise"})
    # Bulk scoring refuses the row too, as the card says.
    data = tmp_path / "in.csv"
    data.write_text("plan,usage,calls\nenterprise,50,3\nplus,50,3\n")
    # (Not necessarily production: its labels are noise, so the gate may refuse it.)
    summary = score_csv(store, "plans", data, tmp_path / "out.csv", version=manifest.version)
    assert (summary.scored, summary.refused) == (1, 1)
    assert "enterprise" in summary.errors.read_text()


def test_card_says_out_of_range_values_are_predicted_with_a_warning(
    trained: tuple[ModelStore, Manifest, str],
) -> None:
    _, manifest, card = trained
    assert model_card.OUT_OF_RANGE_RULE in card

    far = {**GOOD, "usage": 10_000.0}
    assert _validate(manifest, far)
    rows = RowEncoder(manifest).records([far])
    warnings = ModelDrift(manifest, window_rows=100).out_of_range(rows)
    usage = next(f for f in manifest.features if f.name == "usage")
    assert warnings == [f"usage is outside its training range [{usage.min:g}, {usage.max:g}]"]


def test_card_says_which_features_accept_missing_values(
    trained: tuple[ModelStore, Manifest, str],
) -> None:
    _, manifest, card = trained
    assert "It is accepted for `usage` (missing in training), and filled in" in card
    assert "| `usage` | numeric |" in card

    assert _validate(manifest, {**GOOD, "usage": None})
    assert not _validate(manifest, {**GOOD, "plan": None})
    assert not _validate(manifest, {**GOOD, "calls": None})


def test_comparison_table_shows_baseline_and_cross_validation_figures() -> None:
    metrics = {
        "accuracy": 0.91,
        "f1_macro": 0.9,
        "baseline_accuracy": 0.55,
        "cv_accuracy_mean": 0.89,
        "cv_accuracy_std": 0.02,
        "baseline_cv_accuracy_mean": 0.54,
        "baseline_cv_accuracy_std": 0.01,
        "baseline_log_loss": 0.69,
    }

    rows = model_card.comparison_rows(metrics, [["brier", "0.08", "0.25", ""]])

    assert rows[0] == "| metric | holdout | baseline | cross-validation (mean ± std) |"
    assert (
        "| accuracy | 0.9100 | 0.5500 (cross-validation 0.5400 ± 0.0100) | 0.8900 ± 0.0200 |"
        in rows
    )
    assert "| baseline_log_loss |  | 0.6900 |  |" in rows
    assert rows[-1] == "| brier | 0.08 | 0.25 |  |"
    assert not any(r.startswith("| f1_macro") for r in rows)  # nothing to compare it with
    assert model_card.comparison_rows({"accuracy": 0.9}) == []
    assert model_card.holdout_rows(metrics) == ["| accuracy | 0.9100 |", "| f1_macro | 0.9000 |"]


def test_render_places_comparison_figures_after_the_holdout_metrics(
    trained: tuple[ModelStore, Manifest, str],
) -> None:
    _, manifest, _ = trained
    facts = model_card.CardFacts(
        name="m",
        description="",
        task=manifest.task,
        estimator=manifest.estimator,
        params={},
        origin="test",
        fingerprint="0" * 64,
        n_train=1,
        n_test=1,
        test_size=0.25,
        seed=0,
        target="left",
        classes=None,
        primary_metric="accuracy",
        tolerance=0.0,
        impute="median",
    )
    card = model_card.render(
        facts,
        metrics={"accuracy": 0.9, "baseline_accuracy": 0.5},
        features=manifest.features,
        plots=[],
        onnx=None,
        importances=None,
        extra_comparison_rows=[["brier", "0.08", "0.25", ""]],
    )
    holdout, comparison = card.split("## Baseline and cross-validation")
    assert "| accuracy | 0.9000 |" in holdout
    assert "baseline_accuracy" not in holdout
    assert "| accuracy | 0.9000 | 0.5000 |  |" in comparison
    assert "| brier | 0.08 | 0.25 |  |" in comparison
