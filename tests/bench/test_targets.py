from bench.scenarios import (
    BARE,
    NAIVE,
    SERVICE,
    InProcess,
    Measurement,
    Outcome,
    Scenario,
    plan,
)
from bench.targets import Target, evaluate
from bench.wrk import Errors, Latency, WrkResult

MODELS = ["iris", "breast_cancer"]


def _result(rps: float, p50: float = 1.0, timeouts: int = 0) -> WrkResult:
    return WrkResult(
        duration_s=10.0,
        requests=round(rps * 10),
        bytes=0,
        errors=Errors(connect=0, read=0, write=0, timeout=timeouts, status=0),
        latency=Latency(mean=p50, p50=p50, p90=p50, p99=p50, p999=p50, max=p50),
    )


def _outcome(server: str, model: str, c: int, result: WrkResult, rows: int = 1) -> Outcome:
    return Outcome(Scenario(server, model, c, rows), runs=(Measurement(result, 1.0, 0.1, 0.0),))


def _by_name(targets: list[Target], fragment: str) -> str:
    (match,) = [t for t in targets if fragment in t.name]
    return str(match.status)


def test_plan_puts_compared_runs_next_to_each_other() -> None:
    scenarios = plan(
        MODELS,
        [SERVICE, BARE, NAIVE],
        connections=[1, 100, 1000],
        baseline_connections=100,
        rows_per_request=10_000,
        rows_connections=1,
    )
    assert [s.key for s in scenarios[:6]] == [
        "service/iris/row/c1",
        "bare/iris/row/c100",
        "naive/iris/row/c100",
        "service/iris/row/c100",
        "service/iris/row/c1000",
        "service/iris/rows10000/c1",
    ]
    assert len(scenarios) == 12
    assert scenarios[-1].is_rows


def test_plan_of_baselines_only() -> None:
    scenarios = plan(
        ["iris"],
        [BARE],
        connections=[1, 100],
        baseline_connections=50,
        rows_per_request=10_000,
        rows_connections=1,
    )
    assert [s.key for s in scenarios] == ["bare/iris/row/c50"]


def test_outcome_reports_the_median_round_and_errors_of_all_rounds() -> None:
    rounds = [_result(300, p50=3.0), _result(100, p50=1.0, timeouts=2), _result(200, p50=2.0)]
    outcome = Outcome(
        Scenario(SERVICE, "iris", 100), runs=tuple(Measurement(r, 1, 0, 0) for r in rounds)
    )
    assert outcome.requests_per_s == 200
    assert outcome.result is not None
    assert outcome.result.latency.p50 == 2.0
    assert outcome.errors is not None
    assert outcome.errors.timeout == 2
    assert outcome.spread == 1.0  # (300 - 100) / 200


def test_an_error_voids_the_earlier_rounds() -> None:
    outcome = Outcome(
        Scenario(SERVICE, "iris", 100),
        runs=(Measurement(_result(100), 1, 0, 0),),
        error="server exited",
    )
    assert outcome.result is None
    assert outcome.requests_per_s is None


def test_ratios_are_pass_or_miss_for_the_issue_models_and_info_for_others() -> None:
    outcomes = [
        _outcome(BARE, "iris", 100, _result(1000)),
        _outcome(SERVICE, "iris", 100, _result(900)),
        _outcome(NAIVE, "breast_cancer", 100, _result(10)),
        _outcome(SERVICE, "breast_cancer", 100, _result(400)),
        _outcome(BARE, "breast_cancer", 100, _result(1000)),
    ]
    targets = evaluate(outcomes, [], MODELS)
    assert _by_name(targets, "iris req/s vs bare") == "PASS"
    assert _by_name(targets, "breast_cancer req/s vs naive") == "MISS"
    assert _by_name(targets, "breast_cancer req/s vs bare") == "INFO"
    assert _by_name(targets, "iris req/s vs naive") == "N/A"


def test_errors_at_c1000_and_latency_at_c1() -> None:
    outcomes = [
        _outcome(SERVICE, "iris", 1000, _result(500, timeouts=1)),
        _outcome(SERVICE, "breast_cancer", 1000, _result(500)),
        _outcome(SERVICE, "iris", 1, _result(500, p50=2.9)),
        _outcome(SERVICE, "breast_cancer", 1, _result(500, p50=3.0)),
    ]
    targets = evaluate(outcomes, [], MODELS)
    assert _by_name(targets, "iris c=1000") == "MISS"
    assert _by_name(targets, "breast_cancer c=1000") == "PASS"
    assert _by_name(targets, "iris p50") == "PASS"
    assert _by_name(targets, "breast_cancer p50") == "MISS"


def test_failed_scenarios_make_targets_not_applicable() -> None:
    outcomes = [Outcome(Scenario(SERVICE, "iris", 1000), error="server died")]
    assert _by_name(evaluate(outcomes, [], MODELS), "iris c=1000") == "N/A"


def test_rows_request_is_compared_with_in_process_predict() -> None:
    outcomes = [_outcome(SERVICE, "iris", 1, _result(10), rows=10_000)]
    local = [InProcess("iris", 10_000, batch_s=0.01, single_row_ms=0.1)]
    (target,) = [t for t in evaluate(outcomes, local, MODELS) if "in-process" in t.name]
    assert target.status == "INFO"
    assert target.value == 10.0  # 100 000 rows/s of 1 000 000 rows/s
