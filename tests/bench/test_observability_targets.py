"""Issue 8's target: the service with metrics, drift and access log vs without them."""

from pathlib import Path

from bench.run import _spec
from bench.scenarios import SERVICE, SERVICE_QUIET, SERVICE_SKLEARN, plan
from bench.targets import evaluate, observability_targets
from tests.bench.test_runtime_targets import _named, _outcome

NAME = "iris req/s with metrics + access log vs without, c=100"


def test_plan_puts_the_quiet_service_next_to_the_service() -> None:
    scenarios = plan(
        ["iris"],
        [SERVICE, SERVICE_SKLEARN, SERVICE_QUIET],
        connections=[1, 100],
        baseline_connections=100,
        rows_per_request=1,
        rows_connections=1,
    )
    keys = [s.key for s in scenarios]
    at = keys.index("service/iris/row/c100")
    assert keys[at + 1] == "service_quiet/iris/row/c100"
    assert [s.server for s in scenarios].count(SERVICE_QUIET) == 1


def test_quiet_server_turns_metrics_and_access_log_off() -> None:
    quiet = _spec(SERVICE_QUIET, Path("models"), ["iris"], 2048).env
    observed = _spec(SERVICE, Path("models"), ["iris"], 2048).env
    assert quiet["SERVEWELL_METRICS"] == "false"
    assert quiet["SERVEWELL_ACCESS_LOG"] == "false"
    assert observed["SERVEWELL_METRICS"] == "true"
    assert observed["SERVEWELL_ACCESS_LOG"] == "true"
    assert observed["SERVEWELL_LOG_LEVEL"] == "info"  # the access log is at info level


def test_observability_cost_target() -> None:
    ok = observability_targets(
        [_outcome(SERVICE, "iris", 960), _outcome(SERVICE_QUIET, "iris", 1000)], ["iris"]
    )
    assert _named(ok, NAME).status == "PASS"
    assert _named(ok, NAME).value == 96.0
    slow = observability_targets(
        [_outcome(SERVICE, "iris", 900), _outcome(SERVICE_QUIET, "iris", 1000)], ["iris"]
    )
    assert _named(slow, NAME).status == "MISS"
    cpu = _named(slow, "iris server CPU per request with metrics + access log vs without, c=100")
    assert cpu.status == "INFO"
    assert cpu.value is not None
    assert abs(cpu.value - 100 * 1000 / 900) < 1e-9  # same CPU for fewer requests
    # Without the quiet service in the run there is no row at all.
    assert observability_targets([_outcome(SERVICE, "iris", 900)], ["iris"]) == []
    assert all(t.name != NAME for t in evaluate([_outcome(SERVICE, "iris", 900)], [], ["iris"]))
