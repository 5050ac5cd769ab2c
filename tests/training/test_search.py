from __future__ import annotations

import csv
from pathlib import Path

import pytest

from serving.store import ModelStore
from tests.training.conftest import quiet
from training.run import train
from training.spec import SpecError, load_spec, shipped_spec

SPECS = Path(__file__).resolve().parents[2] / "training" / "specs"


def _with_search(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "iris_search.toml"
    path.write_text((SPECS / "iris.toml").read_text() + "\n" + table)
    return path


def test_grid_search_records_the_chosen_parameters(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(
        _with_search(tmp_path, '[search]\nkind = "grid"\nparams = { C = [0.001, 1.0] }\n')
    )
    result = train(spec, store, echo=quiet)
    search = result.manifest.spec["outcome"]["search"]
    assert search["best_params"] == {"model__C": 1.0}  # 0.001 barely separates the classes
    assert search["scoring"] == "f1_macro"
    assert [row["rank"] for row in search["results"]] == [1, 2]
    with (result.path / "report" / "search_results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["model__C"] for row in rows] == ["1.0", "0.001"]
    assert float(rows[0]["mean_test_score"]) > float(rows[1]["mean_test_score"])
    assert "report/search_results.csv" in result.manifest.files
    _, model = store.load_model("iris", result.version)
    assert model.get_params()["model__C"] == 1.0


def test_random_search_draws_from_a_distribution(tmp_path: Path, store: ModelStore) -> None:
    spec = load_spec(
        _with_search(
            tmp_path,
            '[search]\nkind = "random"\nn_iter = 3\nscoring = "accuracy"\n'
            '[search.params]\nC = { distribution = "loguniform", low = 0.01, high = 10 }\n',
        )
    )
    result = train(spec, store, echo=quiet)
    search = result.manifest.spec["outcome"]["search"]
    assert len(search["results"]) == 3
    assert 0.01 <= search["best_params"]["model__C"] <= 10


def test_grid_search_refuses_a_distribution(tmp_path: Path) -> None:
    path = _with_search(
        tmp_path,
        '[search]\nkind = "grid"\n'
        '[search.params]\nC = { distribution = "uniform", low = 0.1, high = 1 }\n',
    )
    with pytest.raises(SpecError, match="a grid search takes lists"):
        load_spec(path)


def test_unknown_search_parameter_fails_before_writing(store: ModelStore) -> None:
    spec = shipped_spec("iris").with_overrides(
        {"search": {"kind": "grid", "params": {"colour": ["red"]}}}
    )
    with pytest.raises(ValueError, match="colour"):
        train(spec, store, echo=quiet)
    assert store.names() == []
