"""Alternating low-load runs: the median ratio decides, and a real server answers both loads."""

import json
from functools import partial
from pathlib import Path

import pytest

from bench import alternating, servers, wrk
from bench.alternating import Alternation
from bench.shared_core import PairLoad
from serving.store import ModelStore


def test_the_median_of_adjacent_runs_decides() -> None:
    runs = Alternation("v2 JSON vs typed", "iris", 1, 1.0, (0.97, 0.80, 1.01, 0.99, 0.95))
    assert runs.ratio == pytest.approx(0.97)
    (row,) = alternating.summary_rows([runs])
    assert row[:4] == ["v2 JSON vs typed", "iris", "1", "5"]
    assert row[4] == "97.0 % (80-101 %)"
    failed = Alternation("v2 JSON vs typed", "iris", 1, 1.0, error="service died")
    assert failed.ratio is None
    assert alternating.summary_rows([failed])[0][-1] == "service died"


@pytest.mark.skipif(wrk.find_wrk() is None, reason="needs wrk")
def test_two_loads_alternate_on_a_real_server(store: ModelStore, tmp_path: Path) -> None:
    spec = servers.baseline_spec("bare", store.root, ["iris"], backlog=128)
    server = servers.start(spec, tmp_path, ready_timeout_s=60)
    try:
        bodies = tmp_path / "bodies.jsonl"
        row = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5}
        row |= {"petal_length_cm": 1.4, "petal_width_cm": 0.2}
        bodies.write_text(json.dumps({"instances": [row]}) + "\n")
        load = PairLoad("/models/iris/predict", bodies)
        wrk_path = wrk.find_wrk()
        assert wrk_path is not None
        alternate = partial(
            alternating.alternate,
            server=server,
            model="iris",
            a=load,
            wrk_path=wrk_path,
            runs=2,
            duration_s=1.0,
            connections=1,
            timeout_s=2.0,
        )
        result = alternate("a/a", b=load)
        assert result.error is None, result.error
        assert len(result.ratios) == 2  # the warm-up pair is not kept
        assert result.ratio is not None
        assert 0.5 < result.ratio < 2.0  # the same load on both sides
        missing = PairLoad("/models/nope/predict", bodies)  # every request a 404
        refused = alternate("a/404", b=missing)
        assert refused.ratio is None
        assert refused.error is not None
        assert "errors" in refused.error
    finally:
        server.stop()
