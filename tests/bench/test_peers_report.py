import json
from dataclasses import replace
from pathlib import Path

from bench import peers, peers_report
from bench.scenarios import Measurement, Outcome, Scenario
from bench.wrk import Errors, Latency, WrkResult


def _outcome(server: str, model: str, c: int, rps: float, errors: int = 0) -> Outcome:
    result = WrkResult(
        duration_s=5.0,
        requests=round(rps * 5),
        bytes=1,
        errors=Errors(connect=0, read=0, write=0, timeout=errors, status=0),
        latency=Latency(mean=5, p50=4.25, p90=8, p99=12.5, p999=20, max=30),
    )
    return Outcome(Scenario(server, model, c), runs=(Measurement(result, 9.0, 1.0, 0.5),))


def _run() -> peers_report.Run:
    outcomes = [
        _outcome(peers_report.SERVEWELL, "iris", 100, 3000),
        _outcome(peers_report.MLSERVER, "iris", 100, 800),
        _outcome(peers_report.SERVEWELL, "iris", 1000, 2500, errors=3),
        Outcome(Scenario(peers_report.MLSERVER, "iris", 1000), error="wrk exited with 1"),
    ]
    return peers_report.Run(
        timestamp="20260101T000000Z",
        environment={},
        settings={"models": ["iris"], "connections": [100, 1000]},
        outcomes=outcomes,
        parity=[peers_report.Parity("iris", 500, matches=500, matches_in_process=500)],
        targets=peers_report.evaluate(outcomes, ["iris"]),
        notes=["a note"],
    )


def test_targets_use_the_ratio_and_servewell_errors() -> None:
    run = _run()
    assert peers_report.ratio(run.outcomes, "iris", 100) == 3000 / 800
    assert peers_report.ratio(run.outcomes, "iris", 1000) is None  # MLServer failed
    by_name = {t.name: t for t in run.targets}
    ratio = by_name["iris single-row req/s servewell / MLServer, c=100"]
    assert (ratio.measured, ratio.status) == ("3.75x", "PASS")
    errors = by_name["iris servewell errors at c=1000 (all rounds)"]
    assert (errors.measured, errors.status) == ("3", "MISS")
    missing = peers_report.evaluate([], ["iris"])
    assert {t.status for t in missing} == {"N/A"}


def test_ratio_below_three_is_a_miss() -> None:
    outcomes = [
        _outcome(peers_report.SERVEWELL, "iris", 100, 2000),
        _outcome(peers_report.MLSERVER, "iris", 100, 800),
    ]
    (ratio, _) = peers_report.evaluate(outcomes, ["iris"])
    assert (ratio.measured, ratio.status) == ("2.50x", "MISS")


def test_table_is_side_by_side_with_the_ratio() -> None:
    rows = peers_report.table_rows(_run())
    assert rows == [
        ["iris", "100", "3,000", "4.2", "12.5", "0", "800", "4.2", "12.5", "0", "3.75x"],
        ["iris", "1000", "2,500", "4.2", "12.5", "3", "FAILED", "-", "-", "-", "-"],
    ]
    markdown = peers_report.markdown_table(_run()).splitlines()
    assert markdown[0].startswith("| model | conns | servewell req/s")
    assert len(markdown) == 4
    text = peers_report.render(_run())
    assert "MLServer = servewell on 500/500 rows" in text
    assert "mlserver/iris/row/c1000: wrk exited with 1" in text
    assert "a note" in text


def test_latency_of_a_round_with_no_answer_within_the_timeout_is_not_shown() -> None:
    slow = WrkResult(
        duration_s=5.0,
        requests=100,
        bytes=1,
        errors=Errors(connect=0, read=0, write=0, timeout=100, status=0),
        latency=Latency(mean=0, p50=0, p90=0, p99=0, p999=0, max=0),
    )
    run = _run()
    outcomes = [
        *run.outcomes[:3],
        Outcome(Scenario(peers_report.MLSERVER, "iris", 1000), runs=(Measurement(slow, 1, 1, 1),)),
    ]
    rows = peers_report.table_rows(replace(run, outcomes=outcomes))
    assert rows[1][6:10] == ["20", "-", "-", "100"]


def test_write_json_and_chart(tmp_path: Path) -> None:
    written = peers_report.write(_run(), tmp_path, chart=True)
    assert sorted(p.name for p in written) == [
        "peers-20260101T000000Z.json",
        "peers-20260101T000000Z.png",
        "peers-latest.json",
        "peers-latest.png",
    ]
    doc = json.loads((tmp_path / "peers-latest.json").read_text())
    assert doc["ratios_servewell_over_mlserver"] == {"iris/c100": 3.75, "iris/c1000": None}
    assert doc["parity"][0]["ok"] is True
    assert [s["key"] for s in doc["scenarios"]][3] == "mlserver/iris/row/c1000"
    assert (tmp_path / "peers-latest.png").read_bytes()[:4] == b"\x89PNG"


def test_a_results_file_renders_and_replots_as_the_run_did(tmp_path: Path) -> None:
    run = _run()
    (json_path, *_) = peers_report.write(run, tmp_path, chart=False)
    loaded = peers_report.from_json(json.loads(json_path.read_text()))
    assert peers_report.table_rows(loaded) == peers_report.table_rows(run)
    assert peers_report.render(loaded) == peers_report.render(run)
    assert peers.main(["--replot", str(json_path)]) == 0
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
