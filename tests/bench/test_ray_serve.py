from bench.ray_serve import overhead_notes
from bench.scenarios import RAY, SERVICE, Measurement, Outcome, Scenario, plan
from bench.wrk import Errors, Latency, WrkResult


def _result(rps: float, p50: float) -> WrkResult:
    return WrkResult(
        duration_s=10.0,
        requests=round(rps * 10),
        bytes=0,
        errors=Errors(connect=0, read=0, write=0, timeout=0, status=0),
        latency=Latency(mean=p50, p50=p50, p90=p50, p99=p50, p999=p50, max=p50),
    )


def _outcome(server: str, c: int, rps: float, p50: float) -> Outcome:
    return Outcome(
        Scenario(server, "iris", c), runs=(Measurement(_result(rps, p50), 1.0, 0.1, 0.0),)
    )


def test_plan_puts_ray_next_to_the_service_up_to_100_connections() -> None:
    scenarios = plan(
        ["iris"],
        [SERVICE, RAY],
        connections=[1, 100, 1000],
        baseline_connections=100,
        rows_per_request=10_000,
        rows_connections=1,
    )
    assert [s.key for s in scenarios] == [
        "service/iris/row/c1",
        "ray/iris/row/c1",
        "service/iris/row/c100",
        "ray/iris/row/c100",
        "service/iris/row/c1000",
        "service/iris/rows10000/c1",
    ]


def test_overhead_is_ray_against_the_service_at_the_same_load() -> None:
    outcomes = [
        _outcome(SERVICE, 1, rps=1000, p50=0.8),
        _outcome(RAY, 1, rps=250, p50=3.8),
        _outcome(SERVICE, 100, rps=2000, p50=40.0),
        _outcome(RAY, 1000, rps=100, p50=900.0),  # no service run at this load: no note
    ]
    assert overhead_notes(outcomes) == [
        "Ray proxy overhead, iris c=1: p50 3.80 ms vs 0.80 ms single-box (+3.00 ms per "
        "request); 250 vs 1,000 req/s (0.25x)."
    ]


def test_no_overhead_without_a_ray_run() -> None:
    assert overhead_notes([_outcome(SERVICE, 1, rps=1000, p50=0.8)]) == []
