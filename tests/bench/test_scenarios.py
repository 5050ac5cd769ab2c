"""The suites as data: what they cover, and that every target refers to a measured scenario."""

import re

from bench import scenarios
from bench.run import parse_args, select
from bench.scenarios import PAIR, SERVERS, main_suite, peers_suite, ray_suite
from serving.settings import default_workers

MODELS = ["iris", "breast_cancer"]


def test_every_suite_is_consistent() -> None:
    for suite in (main_suite(MODELS, "main"), peers_suite(MODELS), ray_suite(MODELS)):
        keys = [s.key for s in suite.scenarios]
        assert len(keys) == len(set(keys))
        assert {s.server for s in suite.scenarios} <= {*SERVERS, "service@base"}
        for t in suite.targets:
            assert not re.search(r"#\d|issue", t.name, re.IGNORECASE)
            if t.paired:
                assert t.b is not None
                assert (t.a.connections, t.a.rows) == (t.b.connections, t.b.rows)
                assert t.a.connections == PAIR or t.a.rows == scenarios.ROWS
            else:
                assert t.a in suite.scenarios
                assert t.b is None or t.b in suite.scenarios


def test_the_main_suite_covers_what_the_service_is_measured_on() -> None:
    suite = main_suite(MODELS)
    measured = {(s.server, s.model, s.request, s.connections, s.rows) for s in suite.scenarios}
    for m in MODELS:
        for server in ("service", "service_sklearn", "bare", "naive", "service_quiet"):
            assert (server, m, "typed", 100, 1) in measured
        for c in (1, 100, 1000):
            assert ("service", m, "typed", c, 1) in measured
        for request in ("rows", "v2json", "v2binary"):
            assert ("service", m, request, 1, scenarios.ROWS) in measured
    paired = {t.name for t in suite.targets if t.paired}
    assert "iris: access log, throughput kept" in paired
    assert "breast_cancer vs iris, single row" in paired
    assert not any("this commit" in name for name in paired)
    with_ref = [t for t in main_suite(MODELS, "abc123").targets if "this commit" in t.name]
    assert [t.b.server for t in with_ref if t.b] == ["service@base"] * 8
    compared = {(t.a.request, t.a.rows) for t in with_ref}
    rows = scenarios.ROWS
    assert compared == {("typed", 1), ("v2json", 1), ("rows", rows), ("v2binary", rows)}
    assert all(t.at_least == 0.97 and t.paired for t in with_ref)
    memory = [t for t in suite.targets if t.figure == "rss MiB"]
    assert [(t.a.server, t.at_most) for t in memory] == [("service_one", 200)]
    assert SERVERS["service_one"].env["SERVEWELL_WORKERS"] == "1"
    assert memory[0].a in suite.scenarios
    env = SERVERS["service_capture"].env
    bounded = [t for t in suite.targets if t.figure == "queue max"]
    # Each server process has its own queue; the gauge adds them up.
    per_process = int(env["SERVEWELL_CAPTURE_QUEUE_ROWS"])
    assert {t.at_most for t in bounded} == {per_process * default_workers()}
    assert {(t.a.request, t.a.connections) for t in bounded} == {("rows", 1), ("typed", 1000)}
    assert "{run}" in env["SERVEWELL_CAPTURE_URL"]  # a database per server, in the run's temp dir
    # The c=1 p50 goal is absolute: the raw ASGI app's p50 at c=1, measured next to it, shows
    # the box's own floor (a figure, not a goal).
    (floor,) = [t for t in suite.targets if t.name == "iris: c=1, p50 vs raw ASGI hello"]
    assert floor.b is not None
    assert (floor.b.server, floor.b.connections, floor.figure) == ("hello", 1, "p50 ms")
    assert (floor.at_least, floor.at_most) == (None, None)
    assert suite.scenarios.index(floor.b) == suite.scenarios.index(floor.a) + 1
    writer = [t.at_least for t in suite.targets if t.figure == "capture rows/s"]
    kept = [t.at_least for t in suite.targets if t.paired and t.a.server == "service_capture"]
    assert (writer, kept) == ([20_000] * 2, [0.90] * 2)


def test_the_main_suite_measures_explanations() -> None:
    suite = main_suite(MODELS)
    measured = {(s.server, s.model, s.request, s.connections, s.rows) for s in suite.scenarios}
    for m in MODELS:
        assert ("service", m, "explain", 1, 1) in measured
        assert {("service", m, r, 4, 100) for r in ("typed", "explain")} <= measured
    (latency,) = [t for t in suite.targets if t.name == "breast_cancer: c=1, explained p50"]
    assert (latency.figure, latency.at_most) == ("p50 ms", 20.0)
    kept, errors = [t for t in suite.targets if "beside" in t.name]
    assert (errors.a, errors.b, errors.figure, errors.at_most) == (kept.a, None, "errors", 0)
    assert kept.b is not None
    assert kept.a.beside is not None
    assert kept.b.beside is None
    assert (kept.a.beside.model, kept.a.beside.request) == ("breast_cancer", "explain")
    assert kept.a.model == kept.b.model == "iris"
    assert kept.at_least == 0.90
    assert kept.a.key != kept.b.key


def test_only_narrows_scenarios_and_targets() -> None:
    suite = select(parse_args(["--quick", "--only", "rows10000", "--models", "iris"]))
    assert suite.scenarios
    assert all("rows10000" in s.key for s in suite.scenarios)
    assert suite.targets
    assert all(not t.paired for t in suite.targets)


def test_only_keeps_what_a_kept_ratio_compares() -> None:
    suite = select(parse_args(["--quick", "--only", "gRPC raw", "--models", "iris"]))
    (target,) = suite.targets
    assert target.b is not None
    assert set(suite.scenarios) == {target.a, target.b}
