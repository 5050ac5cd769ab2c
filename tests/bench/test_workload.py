import json
from pathlib import Path

import numpy as np
import pytest

from bench import workload
from serving.store import Manifest, ModelNotFoundError, ModelStore


def test_sampled_rows_stay_in_the_training_range_and_repeat_by_seed(iris: Manifest) -> None:
    rows = workload.sample_rows(iris, 200, seed=1)
    assert rows == workload.sample_rows(iris, 200, seed=1)
    assert rows != workload.sample_rows(iris, 200, seed=2)
    for i, feature in enumerate(iris.features):
        assert feature.min is not None
        assert feature.max is not None
        values = [row[i] for row in rows]
        assert all(isinstance(v, float) and feature.min <= v <= feature.max for v in values)


def test_instances_body_names_every_feature(iris: Manifest) -> None:
    rows = workload.sample_rows(iris, 2, seed=0)
    body = json.loads(workload.instances_body(iris, rows))
    assert [list(inst) for inst in body["instances"]] == [iris.feature_names] * 2
    assert [list(inst.values()) for inst in body["instances"]] == rows


def test_rows_body_is_positional_and_one_line(iris: Manifest) -> None:
    rows = workload.sample_rows(iris, 3, seed=0)
    text = workload.rows_body(rows)
    assert "\n" not in text
    assert json.loads(text) == {"rows": rows}


def test_write_bodies_writes_one_per_line_and_rejects_newlines(tmp_path: Path) -> None:
    path = workload.write_bodies(tmp_path / "b.jsonl", ['{"a":1}', '{"a":2}'])
    assert path.read_text().splitlines() == ['{"a":1}', '{"a":2}']
    with pytest.raises(ValueError, match="newline"):
        workload.write_bodies(tmp_path / "c.jsonl", ['{"a":\n1}'])


def test_model_input_matches_the_manifest_format(iris: Manifest) -> None:
    rows = workload.sample_rows(iris, 5, seed=0)
    x = workload.model_input(iris, rows)
    assert isinstance(x, np.ndarray)
    assert x.shape == (5, len(iris.features))


def test_served_version_is_production(store: ModelStore) -> None:
    assert workload.served_version(store, "iris") == store.production("iris")


def test_served_version_of_unknown_model_raises(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        workload.served_version(store, "no_such_model")
