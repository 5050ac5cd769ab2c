import json
from dataclasses import replace
from pathlib import Path

from bench import peers
from bench.scenarios import Measurement, Outcome, Scenario
from bench.wrk import Errors, Latency, WrkResult
from serving.store import ModelStore


def _outcome(server: str, model: str, c: int, rps: float, errors: int = 0) -> Outcome:
    result = WrkResult(
        duration_s=5.0,
        requests=round(rps * 5),
        bytes=1,
        errors=Errors(connect=0, read=0, write=0, timeout=errors, status=0),
        latency=Latency(mean=5, p50=4.25, p90=8, p99=12.5, p999=20, max=30),
    )
    return Outcome(Scenario(server, model, c), runs=(Measurement(result, 9.0, 1.0, 0.5),))


def _run() -> peers.Run:
    outcomes = [
        _outcome(peers.SERVEWELL, "iris", 100, 3000),
        _outcome(peers.MLSERVER, "iris", 100, 800),
        _outcome(peers.SERVEWELL, "iris", 1000, 2500, errors=3),
        Outcome(Scenario(peers.MLSERVER, "iris", 1000), error="wrk exited with 1"),
    ]
    return peers.Run(
        timestamp="20260101T000000Z",
        environment={},
        settings={"models": ["iris"], "connections": [100, 1000]},
        outcomes=outcomes,
        parity=[peers.Parity("iris", 500, matches=500, matches_in_process=500)],
        targets=peers.evaluate(outcomes, ["iris"]),
        notes=["a note"],
    )


def test_plan_puts_the_two_servers_next_to_each_other_and_overload_last() -> None:
    keys = [s.key for s in peers.plan(["iris", "breast_cancer"], [100, 1000])]
    assert keys == [
        "servewell/iris/row/c100",
        "mlserver/iris/row/c100",
        "servewell/breast_cancer/row/c100",
        "mlserver/breast_cancer/row/c100",
        "servewell/iris/row/c1000",
        "mlserver/iris/row/c1000",
        "servewell/breast_cancer/row/c1000",
        "mlserver/breast_cancer/row/c1000",
    ]


def test_targets_use_the_ratio_and_servewell_errors() -> None:
    run = _run()
    assert peers.ratio(run.outcomes, "iris", 100) == 3000 / 800
    assert peers.ratio(run.outcomes, "iris", 1000) is None  # MLServer failed
    by_name = {t.name: t for t in run.targets}
    ratio = by_name["iris single-row req/s servewell / MLServer, c=100"]
    assert (ratio.measured, ratio.status) == ("3.75x", "PASS")
    errors = by_name["iris servewell errors at c=1000 (all rounds)"]
    assert (errors.measured, errors.status) == ("3", "MISS")
    missing = peers.evaluate([], ["iris"])
    assert {t.status for t in missing} == {"N/A"}


def test_ratio_below_three_is_a_miss() -> None:
    outcomes = [
        _outcome(peers.SERVEWELL, "iris", 100, 2000),
        _outcome(peers.MLSERVER, "iris", 100, 800),
    ]
    (ratio, _) = peers.evaluate(outcomes, ["iris"])
    assert (ratio.measured, ratio.status) == ("2.50x", "MISS")


def test_table_is_side_by_side_with_the_ratio() -> None:
    rows = peers.table_rows(_run())
    assert rows == [
        ["iris", "100", "3,000", "4.2", "12.5", "0", "800", "4.2", "12.5", "0", "3.75x"],
        ["iris", "1000", "2,500", "4.2", "12.5", "3", "FAILED", "-", "-", "-", "-"],
    ]
    markdown = peers.markdown_table(_run()).splitlines()
    assert markdown[0].startswith("| model | conns | servewell req/s")
    assert len(markdown) == 4
    text = peers.render(_run())
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
        Outcome(Scenario(peers.MLSERVER, "iris", 1000), runs=(Measurement(slow, 1, 1, 1),)),
    ]
    rows = peers.table_rows(replace(run, outcomes=outcomes))
    assert rows[1][6:10] == ["20", "-", "-", "100"]


def test_write_json_and_chart(tmp_path: Path) -> None:
    written = peers.write(_run(), tmp_path, chart=True)
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


def test_bodies_carry_the_same_rows_to_both_servers(store: ModelStore, tmp_path: Path) -> None:
    bodies = peers.prepare_bodies(store, {"iris": 1}, 20, tmp_path)
    ours = bodies.files[(peers.SERVEWELL, "iris")].read_text().splitlines()
    theirs = bodies.files[(peers.MLSERVER, "iris")].read_text().splitlines()
    assert len(ours) == len(theirs) == 20
    for row, our, their in zip(bodies.rows["iris"], ours, theirs, strict=True):
        assert list(json.loads(our)["instances"][0].values()) == row
        assert json.loads(their)["inputs"][0]["data"] == row
    assert len({tuple(r) for r in bodies.rows["iris"]}) == 20  # every body differs


def test_quick_and_default_lengths() -> None:
    args = peers.parse_args([])
    assert (args.rounds, args.duration, args.connections) == (3, 5.0, [100, 1000])
    assert (peers.parse_args(["--quick"]).rounds, peers.parse_args(["--quick"]).duration) == (
        1,
        3.0,
    )


def test_missing_venv_is_reported_before_anything_starts(tmp_path: Path) -> None:
    args = peers.parse_args(["--venv", str(tmp_path / "none")])
    problem = peers._preconditions(args)
    assert problem is not None
    assert "make bench-peers" in problem


def test_a_results_file_renders_and_replots_as_the_run_did(tmp_path: Path) -> None:
    run = _run()
    (json_path, *_) = peers.write(run, tmp_path, chart=False)
    loaded = peers.from_json(json.loads(json_path.read_text()))
    assert peers.table_rows(loaded) == peers.table_rows(run)
    assert peers.render(loaded) == peers.render(run)
    assert peers.main(["--replot", str(json_path)]) == 0
    assert json_path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
