import json
from pathlib import Path

from bench import report
from bench.scenarios import BARE, SERVICE, InProcess, Measurement, Outcome, Scenario
from bench.targets import evaluate
from bench.wrk import Errors, Latency, WrkResult


def _run() -> report.Run:
    result = WrkResult(
        duration_s=10.0,
        requests=20_000,
        bytes=1,
        errors=Errors(connect=0, read=1, write=0, timeout=0, status=2),
        latency=Latency(mean=5, p50=4, p90=8, p99=12, p999=20, max=30),
    )
    outcomes = [
        Outcome(Scenario(BARE, "iris", 100), runs=(Measurement(result, 9.0, 1.0, 0.5),)),
        Outcome(Scenario(SERVICE, "iris", 100), error="preflight POST -> HTTP 500"),
    ]
    local = [InProcess("iris", 10_000, batch_s=0.002, single_row_ms=0.05)]
    return report.Run(
        timestamp="20250101T000000Z",
        environment={"cpu_count": 2},
        settings={"duration": 10.0},
        outcomes=outcomes,
        in_process=local,
        targets=evaluate(outcomes, local, ["iris"]),
        notes=["a note"],
    )


def test_render_shows_rates_errors_failures_and_targets() -> None:
    text = report.render(_run())
    assert "bare/iris/row/c100" in text
    assert "2,000" in text  # req/s
    assert "0/1/0/0/2" in text  # connect/read/write/timeout/non-2xx
    assert "90 %" in text  # server CPU over 10 s
    assert "FAILED service/iris/row/c100: preflight POST -> HTTP 500" in text
    assert "iris req/s vs bare POST, c=100" in text
    assert "a note" in text


def test_write_json_chart_and_latest_copies(tmp_path: Path) -> None:
    written = report.write(_run(), tmp_path, chart=True)
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["20250101T000000Z.json", "20250101T000000Z.png", "latest.json", "latest.png"]
    )
    data = json.loads((tmp_path / "latest.json").read_text())
    bare, service = data["scenarios"]
    assert bare["requests_per_s"] == 2000.0
    assert bare["errors_all_rounds"]["total"] == 3
    assert bare["rounds"][bare["median_round"]]["latency_ms"]["p99"] == 12
    assert bare["rounds"][0]["server_cpu_percent"] == 90.0
    assert service["error"].startswith("preflight")
    assert service["rounds"] == []
    assert data["in_process"][0]["rows_per_s"] == 5_000_000
    assert {t["status"] for t in data["targets"]} <= {"PASS", "MISS", "N/A", "INFO"}
