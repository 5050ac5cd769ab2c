"""Targets evaluated from outcomes and paired comparisons; the table and the files."""

import json
import re
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.paired import Comparison, Run
from bench.report import Measured, Outcome
from bench.scenarios import Scenario, Target
from bench.wrk import Result


def _outcome(s: Scenario, *rps: float, errors: int = 0) -> Outcome:
    runs = [Measured(Result(1.0, int(r), errors, 0, 2.0, 3.0, 4.0, 9.0), 90.0, 5.0) for r in rps]
    return Outcome(s, runs)


SERVICE = Scenario("iris", "service", "typed", 100)
BARE = Scenario("iris", "bare", "typed", 100)
ROWS = Scenario("iris", "service", "rows", 1, rows=10_000)


def test_the_median_round_gives_the_figures_and_errors_count_every_round() -> None:
    o = _outcome(SERVICE, 900, 1200, 1000, errors=1)
    assert o.figure("req/s") == 1000
    assert o.figure("errors") == 3
    assert o.spread == 0.3
    assert _outcome(ROWS, 10).figure("rows/s") == 100_000
    assert Outcome(SERVICE, error="died").figure("req/s") is None


def test_capture_figures_rows_s_of_the_median_round_drops_and_queue_of_every_round() -> None:
    o, figures = _outcome(ROWS, 9, 11, 10), [{"dropped": 5.0, "queue max": 7.0}, {}]
    figures.append({"capture rows/s": 3.0})  # the median round, by req/s
    o.runs = [replace(r, capture=f) for r, f in zip(o.runs, figures, strict=True)]
    assert (o.figure("capture rows/s"), o.figure("dropped"), o.figure("queue max")) == (3, 5, 7)
    assert _outcome(ROWS, 10).figure("queue max") is None  # never sampled: not "bounded"


def test_memory_is_the_most_any_round_left_resident() -> None:
    o = _outcome(SERVICE, 9, 11, 10)
    o.runs = [replace(r, rss_mb=m) for r, m in zip(o.runs, (180.0, None, 176.5), strict=True)]
    assert o.figure("rss MiB") == 180.0
    assert _outcome(SERVICE, 10).figure("rss MiB") is None  # not measured: no figure


def test_targets_pass_miss_info_and_na() -> None:
    outcomes = [_outcome(SERVICE, 1000), _outcome(BARE, 1250), _outcome(ROWS, 1)]
    pair = Comparison((Run(1, 1, 100.0, 96.0), Run(1, 1, 100.0, 94.0), Run(1, 1, 100.0, 95.0)))
    targets = [
        Target("vs bare", SERVICE, BARE, "req/s", 0.75),
        Target("vs bare, strict", SERVICE, BARE, "req/s", 0.9),
        Target("shown", SERVICE, BARE, "req/s"),
        Target("no such run", ROWS, Scenario("iris", "x", "rows", 1), "rows/s", 2.0),
        Target("p50", SERVICE, None, "p50 ms", at_most=3.0),
        Target("access log", SERVICE, BARE, "req/s", 0.95, paired=True),
        Target("not paired", SERVICE, BARE, "req/s", 0.95, paired=True),
    ]
    verdicts = report.evaluate(targets, outcomes, {"access log": pair})
    assert [v.status for v in verdicts] == ["PASS", "MISS", "INFO", "N/A", "PASS", "PASS", "N/A"]
    assert verdicts[0].value == 0.8
    assert verdicts[5].value == 0.95
    text = report.render(outcomes, {"access log": pair}, verdicts, ["a note"])
    assert "service/iris/typed/c100" in text
    assert re.search(r"\nvs bare +80.0 % +>= 75.0 % +PASS\n", text)
    assert re.search(r"\np50 +2.00 ms +<= 3.00 ms +PASS\n", text)
    assert text.endswith("- a note")


def test_json_is_written_with_a_latest_copy(tmp_path: Path) -> None:
    outcomes = [_outcome(SERVICE, 1000), Outcome(BARE, error="did not start")]
    verdicts = report.evaluate([Target("t", SERVICE, BARE, "req/s", 0.85)], outcomes, {})
    meta = {"timestamp": "20260101T000000Z", "suite": "main"}
    document = meta | report.to_json(outcomes, {}, verdicts, [])
    paths = report.write(document, tmp_path, "stamp")
    assert [p.name for p in paths] == ["stamp.json", "stamp.png"]
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["scenarios"][1]["error"] == "did not start"
    assert latest["targets"][0]["status"] == "N/A"
    assert (tmp_path / "latest.png").stat().st_size > 0
