"""The paired statistics and schedule, with the runs faked: no server, no load."""

import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest

from bench import paired


def test_the_median_run_decides_and_ratio_is_throughput_of_a_over_b() -> None:
    # B spends 5 % more CPU per request than A: A allows 5 % more throughput.
    runs = tuple(paired.Run(1000, 1000, 100.0, 100.0 * r) for r in (1.05, 0.98, 1.20, 1.04))
    comparison = paired.Comparison(runs)
    assert comparison.ratio == pytest.approx(1.045)
    assert comparison.spread == pytest.approx((0.98, 1.20))
    assert paired.Comparison(error="died").ratio is None


class FakeServer:
    def __init__(self, name: str) -> None:
        self.name, self.pinned = name, False

    def pin(self, loop_cpu: int | None) -> None:
        self.pinned = loop_cpu == 0


def test_half_the_runs_on_each_couple_after_a_warm_up_with_each_wrk_first_as_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str, bool]] = []

    def one_run(a: Any, b: Any, loads: Any, args: Any, a_first: bool, whole: bool) -> paired.Run:
        assert a.pinned and b.pinned  # noqa: PT018
        assert not whole  # the main processes' CPU unless asked
        calls.append((a.name, b.name, a_first))
        return paired.Run(1, 1, 100.0, 100.0 + len(calls))

    monkeypatch.setattr(paired, "one_run", one_run)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    a1, b1, a2, b2 = (FakeServer(n) for n in ("a1", "b1", "a2", "b2"))
    args = Namespace(pair_runs=8, pair_duration=1.0, wrk="wrk")
    loads = [("/a", Path("a"), 50), ("/b", Path("b"), 50)]
    result = paired.compare([(a1, b1), (a2, b2)], loads, args)  # type: ignore[list-item]
    assert [c[:2] for c in calls] == [("a1", "b1")] * 5 + [("a2", "b2")] * 5
    assert [c[2] for c in calls] == [True, False, True, False, True] * 2
    assert len(result.runs) == 8  # the first run on each couple only warmed up
    assert result.runs[0].b_us == 102.0
    assert not any(s.pinned for s in (a1, b1, a2, b2))


def test_one_cpu_cannot_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    args = Namespace(pair_runs=4, pair_duration=1.0, wrk="wrk")
    assert paired.compare([], [], args).error


def test_two_commits_are_compared_on_every_process_of_each_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work may move between processes from one commit to the next (out of a pool worker into
    the server process): the CPU of one process alone would favour the side that moved it out."""
    seen: list[bool] = []

    def one_run(a: Any, b: Any, loads: Any, args: Any, a_first: bool, whole: bool) -> paired.Run:
        seen.append(whole)
        return paired.Run(1, 1, 100.0, 100.0)

    monkeypatch.setattr(paired, "one_run", one_run)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    args = Namespace(pair_runs=2, pair_duration=1.0, wrk="wrk")
    couple = (FakeServer("a"), FakeServer("b"))
    paired.compare([couple], [], args, whole=True)  # type: ignore[list-item]
    assert seen == [True, True]


def test_runs_with_a_starved_side_compare_nothing() -> None:
    """One loop starved on the shared core: its CPU per request is not its code's, so the
    pair reports an error (the target is N/A), never a ratio."""
    fair = paired.Run(5000, 4500, 100.0, 110.0)
    starved = paired.Run(6300, 184, 80.0, 140.0)
    assert paired.judged((fair, fair)).ratio == pytest.approx(1.1)
    refused = paired.judged((fair, starved))
    assert refused.ratio is None
    assert refused.error == "one side starved in 1 of 2 runs (req/s 6300 vs 184)"
