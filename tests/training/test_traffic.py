"""Retraining from traffic: a real iris model, its captured predictions and labels written with
the real CaptureStore, then `train` with the spec's capture section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from serving.store import ModelStore
from tests.training.conftest import quiet
from tests.training.traffic import START, write_iris_traffic
from training.capture_data import iso
from training.errors import DataError
from training.run import OUTCOME_KEY, train
from training.spec import shipped_spec


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'capture.sqlite'}"


@pytest.fixture
def iris(store: ModelStore) -> ModelStore:
    train(shipped_spec("iris"), store, echo=quiet)
    assert store.production("iris") == 1
    return store


def test_capture_only_holds_out_the_newest_traffic_and_beats_production(
    iris: ModelStore, url: str
) -> None:
    written = write_iris_traffic(iris, url, labelled=240, unlabelled=30)
    spec = shipped_spec("iris").with_overrides({"capture": {"use": "only"}})
    result = train(spec, iris, capture_url=url, echo=quiet)

    # Production learnt the old species; the traffic relabels them, so only the candidate fits.
    assert result.promoted, result.decision.reason
    assert "production v1 as served" in result.decision.reason
    assert "time-ordered chunks of the newest traffic" in result.decision.reason
    m = result.manifest
    facts = m.spec[OUTCOME_KEY]["capture"]
    n_test = math.ceil(240 * 0.25)
    assert facts["use"] == "only"
    assert facts["labelled_rows_read"] == 240
    assert facts["captured_rows_used"] == 240
    assert facts["original_rows"] == 0
    assert facts["refused"] == {}
    assert facts["holdout_rows"] == n_test == m.n_test_rows
    assert m.n_train_rows == 240 - n_test
    assert facts["first_prediction"] == iso(START)
    assert facts["last_prediction"] == iso(max(written.ts))
    # The holdout is the newest quarter by prediction time, not a random draw.
    assert facts["holdout_from"] == iso(sorted(written.ts)[240 - n_test])
    assert "newest 25%" in facts["holdout"]
    assert m.spec["capture"] == {"use": "only", "holdout": 0.25, "min_rows": 50}
    assert m.spec[OUTCOME_KEY]["cv"] == "5-fold time-ordered by prediction time"

    card = (result.path / "report" / "model_card.md").read_text()
    assert "Traffic: 240 labelled captured rows predicted" in card
    assert "(the spec's dataset not included)" in card
    holdout = f"Holdout: the newest 25% of the labelled captured rows by prediction time ({n_test}"
    assert holdout in card
    evaluation = json.loads((result.path / "report" / "evaluation.json").read_text())
    assert len(evaluation["folds"]["production"]["f1_macro"]) == 5


def test_with_original_adds_the_dataset_rows_before_the_traffic(iris: ModelStore, url: str) -> None:
    write_iris_traffic(iris, url, labelled=120)
    spec = shipped_spec("iris").with_overrides({"capture": {"use": "with_original"}})
    result = train(spec, iris, capture_url=url, echo=quiet, force_promote=True)
    facts = result.manifest.spec[OUTCOME_KEY]["capture"]
    assert facts["original_rows"] == 150
    assert facts["captured_rows_used"] == 120
    # The holdout is traffic only; the dataset's rows all train.
    assert result.manifest.n_test_rows == 30
    assert result.manifest.n_train_rows == 150 + 90
    card = (result.path / "report" / "model_card.md").read_text()
    assert "plus 150 rows of the spec's dataset" in card
    assert result.manifest.spec[OUTCOME_KEY]["cv"].endswith("(the dataset's rows first)")


def test_too_few_labelled_rows_is_an_error_and_writes_nothing(iris: ModelStore, url: str) -> None:
    write_iris_traffic(iris, url, labelled=30, unlabelled=100)
    spec = shipped_spec("iris").with_overrides({"capture": {"use": "only"}})
    too_few = r"only 30 usable labelled captured rows .*capture.min_rows is 50"
    with pytest.raises(DataError, match=too_few):
        train(spec, iris, capture_url=url, echo=quiet)
    assert iris.versions("iris") == [1]


def test_a_missing_database_or_production_is_an_error(iris: ModelStore, tmp_path: Path) -> None:
    spec = shipped_spec("iris").with_overrides({"capture": {"use": "only"}})
    missing = f"sqlite:///{tmp_path / 'nowhere.sqlite'}"
    with pytest.raises(DataError, match="no capture database at"):
        train(spec, iris, capture_url=missing, echo=quiet)
    assert not (tmp_path / "nowhere.sqlite").exists()  # reading never creates one
    other = spec.with_overrides({"name": "iris2"})
    with pytest.raises(DataError, match="'iris2' has no production version"):
        train(other, iris, capture_url=missing, echo=quiet)
    assert iris.versions("iris") == [1]
