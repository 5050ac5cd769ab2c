import json
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.runtimes import RuntimeTiming
from bench.scenarios import (
    BARE,
    SERVICE,
    SERVICE_SKLEARN,
    InProcess,
    Measurement,
    Outcome,
    Scenario,
)
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


def _run_with_runtimes() -> report.Run:
    timings = [
        RuntimeTiming("iris", 1, "sklearn", 64, call_ms=1.0, rows_per_s=64_000),
        RuntimeTiming("iris", 1, "onnx", 64, call_ms=0.04, rows_per_s=1_600_000),
    ]
    served: dict[str, dict[str, str | None]] = {
        SERVICE: {"iris": "onnx"},
        SERVICE_SKLEARN: {"iris": None},
    }
    return replace(_run(), runtimes=timings, served_runtimes=served)


def test_render_shows_the_runtime_table_and_what_serves_each_model() -> None:
    text = report.render(_run_with_runtimes())
    assert "in-process batch call" in text
    assert "25.0x" in text  # 1 ms on scikit-learn / 0.04 ms on ONNX Runtime
    assert "1,600,000" in text
    assert "service serves: iris onnx" in text
    assert "service_sklearn serves: iris ?" in text
    assert "in-process batch call" not in report.render(_run())  # none measured: no table


def test_json_has_the_runtime_timings(tmp_path: Path) -> None:
    report.write(_run_with_runtimes(), tmp_path, chart=False)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["schema_version"] == 2
    sklearn, onnx = data["runtimes"]
    assert (sklearn["runtime"], sklearn["batch_rows"], sklearn["call_ms"]) == ("sklearn", 64, 1.0)
    assert onnx["rows_per_s"] == 1_600_000
    assert data["served_runtimes"] == {
        "service": {"iris": "onnx"},
        "service_sklearn": {"iris": None},
    }
