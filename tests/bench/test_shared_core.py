"""Paired comparisons on one shared core: the medians, the table, and a real pair of servers."""

import json
import os
from pathlib import Path

import pytest

from bench import servers, shared_core, wrk
from bench.shared_core import PairedComparison, PairRun
from serving.store import ModelStore


def _pair(*ratios: float) -> PairedComparison:
    runs = tuple(PairRun(1000.0, 1000.0 / r, 200.0, 200.0 * r, 190.0, 190.0 * r) for r in ratios)
    return PairedComparison("access log", "service_metrics", "service", "iris", 50, 3.0, runs)


def test_the_median_run_decides_and_throughput_is_its_inverse() -> None:
    pair = _pair(1.10, 1.02, 1.04, 0.90, 1.03)
    assert pair.cpu_ratio == pytest.approx(1.03)
    assert pair.throughput_ratio == pytest.approx(1 / 1.03)
    (row,) = shared_core.summary_rows([pair])
    assert row[:3] == ["access log", "iris", "5"]
    assert row[4] == "1.030 (0.900-1.100)"
    assert row[5] == "97.1 %"
    assert row[6] == "1.030"  # the event-loop thread alone, here the same ratio
    assert pair.runs[0].swapped().cpu_ratio == pytest.approx(1 / 1.10)


def test_a_comparison_without_runs_has_no_ratio_and_says_why() -> None:
    failed = PairedComparison("access log", "a", "b", "iris", 50, 3.0, error="a died")
    assert failed.cpu_ratio is None
    assert failed.throughput_ratio is None
    (row,) = shared_core.summary_rows([failed])
    assert row[2] == "0"
    assert row[-1] == "a died"


needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or wrk.find_wrk() is None,
    reason="needs wrk and 2 CPUs",
)


@needs_two_cpus
def test_two_real_servers_share_a_core_while_compared_and_are_unpinned_after(
    store: ModelStore, tmp_path: Path
) -> None:
    spec = servers.baseline_spec("bare", store.root, ["iris"], backlog=128)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # each server's log: <dir>/<name>.log
    a = servers.start(spec, tmp_path / "a", ready_timeout_s=60)
    b = servers.start(spec, tmp_path / "b", ready_timeout_s=60)
    try:
        cpus = shared_core.cpus()
        shared_core.pin_server(a, cpus[0], set(cpus[1:]))
        assert os.sched_getaffinity(a.process.pid) == {cpus[0]}
        shared_core.unpin_server(a)
        assert os.sched_getaffinity(a.process.pid) == set(cpus)

        bodies = tmp_path / "bodies.jsonl"
        row = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5}
        row |= {"petal_length_cm": 1.4, "petal_width_cm": 0.2}
        bodies.write_text(json.dumps({"instances": [row]}) + "\n")
        wrk_path = wrk.find_wrk()
        assert wrk_path is not None
        pair = shared_core.compare(
            "a/a",
            a,
            b,
            model="iris",
            path="/models/iris/predict",
            bodies_file=bodies,
            wrk_path=wrk_path,
            runs=2,
            duration_s=1.0,
            connections=4,
            timeout_s=2.0,
        )
        assert pair.error is None, pair.error
        assert len(pair.runs) == 2  # the warm-up run is not kept
        for run in pair.runs:
            assert run.a_requests_per_s > 0
            assert run.b_requests_per_s > 0
            assert run.a_cpu_us_per_request > 0
            assert run.b_cpu_us_per_request > 0
            # The thread and the process are read one after the other, in clock ticks: the
            # thread's share may come out up to a tick or two over the whole process's.
            ticks = 2 * 1e6 / os.sysconf("SC_CLK_TCK") / (run.a_requests_per_s * 1.0)
            assert 0 < run.a_loop_us_per_request <= run.a_cpu_us_per_request + ticks
        assert pair.cpu_ratio is not None
        assert 0.5 < pair.cpu_ratio < 2.0  # the same app on both sides
        for server in (a, b):
            assert os.sched_getaffinity(server.process.pid) == set(cpus)
    finally:
        a.stop()
        b.stop()


def test_halves_on_two_instance_pairs_combine_into_one_comparison() -> None:
    first, second = _pair(1.02, 1.04), _pair(1.06, 1.08)
    both = shared_core.combine([first, second])
    assert len(both.runs) == 4
    assert both.cpu_ratio == pytest.approx(1.05)
    failed = PairedComparison("access log", "a", "b", "iris", 50, 3.0, error="b-2 died")
    assert shared_core.combine([first, failed]).error == "b-2 died"
