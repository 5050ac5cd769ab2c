"""Issue 4's targets: the service on ONNX Runtime vs the service on scikit-learn, pure ratios."""

from pathlib import Path

import pytest

from bench.scenarios import (
    BARE,
    NAIVE,
    SERVICE,
    SERVICE_SKLEARN,
    Measurement,
    Outcome,
    Scenario,
    plan,
)
from bench.servers import service_spec
from bench.shared_core import PairedComparison, PairRun
from bench.targets import FLAT_PAIR, Target, evaluate, runtime_targets, wrong_runtime
from bench.wrk import Errors, Latency, WrkResult

MODELS = ["iris", "breast_cancer"]
ROOT_STORE = Path("models")
ROWS = 10_000
FLAT = "breast_cancer req/s vs iris, service (ONNX Runtime), c=100"
FLAT_SKLEARN = "breast_cancer req/s vs iris, service_sklearn (scikit-learn), c=100"


def _outcome(server: str, model: str, rps: float, *, c: int = 100, rows: int = 1) -> Outcome:
    result = WrkResult(
        duration_s=10.0,
        requests=round(rps * 10),
        bytes=0,
        errors=Errors(connect=0, read=0, write=0, timeout=0, status=0),
        latency=Latency(mean=1, p50=1, p90=1, p99=1, p999=1, max=1),
    )
    return Outcome(Scenario(server, model, c, rows), runs=(Measurement(result, 1.0, 0.1, 0.0),))


def _named(targets: list[Target], name: str) -> Target:
    (match,) = [t for t in targets if t.name == name]
    return match


def test_plan_puts_each_runtime_next_to_the_other() -> None:
    scenarios = plan(
        MODELS,
        [SERVICE, SERVICE_SKLEARN, BARE, NAIVE],
        connections=[1, 100, 1000],
        baseline_connections=100,
        rows_per_request=ROWS,
        rows_connections=1,
    )
    assert [s.key for s in scenarios[:8]] == [
        "service/iris/row/c1",
        "bare/iris/row/c100",
        "naive/iris/row/c100",
        "service/iris/row/c100",
        "service_sklearn/iris/row/c100",
        "service/iris/row/c1000",
        "service/iris/rows10000/c1",
        "service_sklearn/iris/rows10000/c1",
    ]
    assert len(scenarios) == 16
    assert [s.server for s in scenarios].count(SERVICE_SKLEARN) == 4


def test_service_sklearn_alone_runs_only_its_comparisons() -> None:
    scenarios = plan(
        ["iris"],
        [SERVICE_SKLEARN],
        connections=[1, 100, 1000],
        baseline_connections=100,
        rows_per_request=ROWS,
        rows_connections=1,
    )
    assert [s.key for s in scenarios] == [
        "service_sklearn/iris/row/c100",
        "service_sklearn/iris/rows10000/c1",
    ]


def test_each_service_pins_its_runtime() -> None:
    auto = service_spec(ROOT_STORE)
    forced = service_spec(ROOT_STORE, name=SERVICE_SKLEARN, runtime="sklearn")
    assert (auto.name, auto.env["SERVEWELL_RUNTIME"]) == (SERVICE, "auto")
    assert (forced.name, forced.env["SERVEWELL_RUNTIME"]) == (SERVICE_SKLEARN, "sklearn")
    assert forced.argv == auto.argv


def test_breast_cancer_within_15_percent_of_iris_on_onnx() -> None:
    outcomes = [
        _outcome(SERVICE, "iris", 1000),
        _outcome(SERVICE, "breast_cancer", 850),
        _outcome(SERVICE_SKLEARN, "iris", 800),
        _outcome(SERVICE_SKLEARN, "breast_cancer", 200),
    ]
    targets = runtime_targets(outcomes, MODELS)
    flat = _named(targets, FLAT)
    assert (flat.value, flat.goal, flat.status) == (85.0, ">= 85 %", "PASS")
    on_sklearn = _named(targets, FLAT_SKLEARN)
    assert (on_sklearn.value, on_sklearn.status) == (25.0, "INFO")

    slower = [*outcomes[:1], _outcome(SERVICE, "breast_cancer", 849), *outcomes[2:]]
    assert _named(runtime_targets(slower, MODELS), FLAT).status == "MISS"


def _flat_pair(*cpu_ratios: float) -> PairedComparison:
    runs = tuple(PairRun(1000.0, 1000.0 / r, 200.0, 200.0 * r) for r in cpu_ratios)
    return PairedComparison(FLAT_PAIR, SERVICE, SERVICE, "breast_cancer", 50, 3.0, runs)


def test_a_paired_comparison_decides_the_flat_target_and_the_rounds_are_shown() -> None:
    # The rounds say 70 %, two like servers on one core say 1 / 1.1 = 90.9 %: the pair decides.
    outcomes = [_outcome(SERVICE, "iris", 1000), _outcome(SERVICE, "breast_cancer", 700)]
    paired = [_flat_pair(1.08, 1.10, 1.12)]
    targets = runtime_targets(outcomes, MODELS, paired=paired)
    flat = _named(targets, "breast_cancer req/s vs iris (ONNX Runtime), paired on one core")
    assert (flat.goal, flat.status) == (">= 85 %", "PASS")
    assert flat.value == pytest.approx(100 / 1.10)
    rounds = _named(targets, FLAT)
    assert (rounds.value, rounds.goal, rounds.status) == (70.0, "-", "INFO")

    slower = runtime_targets(outcomes, MODELS, paired=[_flat_pair(1.20)])
    assert _named(slower, flat.name).status == "MISS"
    served = {SERVICE: {"iris": "onnx", "breast_cancer": "sklearn"}}
    assert _named(runtime_targets(outcomes, MODELS, served, paired), flat.name).status == "N/A"


def test_single_row_runtime_ratios_are_info() -> None:
    outcomes = [_outcome(SERVICE, "iris", 3000), _outcome(SERVICE_SKLEARN, "iris", 1500)]
    targets = runtime_targets(outcomes, MODELS)
    iris = _named(targets, "iris req/s, service vs service_sklearn, c=100")
    assert (iris.value, iris.unit, iris.status) == (2.0, "x", "INFO")
    other = _named(targets, "breast_cancer req/s, service vs service_sklearn, c=100")
    assert (other.value, other.status) == (None, "N/A")


def test_rows_request_needs_twice_the_rows_per_s_of_sklearn() -> None:
    outcomes = [
        _outcome(SERVICE, "iris", 40, c=1, rows=ROWS),
        _outcome(SERVICE_SKLEARN, "iris", 20, c=1, rows=ROWS),
        _outcome(SERVICE, "breast_cancer", 10, c=1, rows=ROWS),
        _outcome(SERVICE_SKLEARN, "breast_cancer", 6, c=1, rows=ROWS),
    ]
    targets = runtime_targets(outcomes, MODELS)
    iris = _named(targets, "iris 10000-row request rows/s, service vs service_sklearn")
    assert (iris.value, iris.goal, iris.status) == (2.0, ">= 2x", "PASS")
    bc = _named(targets, "breast_cancer 10000-row request rows/s, service vs service_sklearn")
    assert bc.status == "MISS"
    assert bc.measured == "1.67x"


def test_unmeasured_inputs_make_runtime_targets_not_applicable() -> None:
    outcomes = [
        _outcome(SERVICE, "iris", 1000),
        Outcome(Scenario(SERVICE, "breast_cancer", 100), error="server died"),
        _outcome(SERVICE, "iris", 40, c=1, rows=ROWS),
        Outcome(Scenario(SERVICE_SKLEARN, "iris", 1, ROWS), error="preflight failed"),
    ]
    targets = runtime_targets(outcomes, MODELS)
    assert _named(targets, FLAT).status == "N/A"
    rows = _named(targets, "iris 10000-row request rows/s, service vs service_sklearn")
    assert (rows.value, rows.status) == (None, "N/A")
    assert _named(targets, "breast_cancer rows request rows/s, service vs service_sklearn")


def test_flat_target_only_with_both_models() -> None:
    names = [t.name for t in runtime_targets([_outcome(SERVICE, "iris", 10)], ["iris"])]
    assert not any("vs iris" in n for n in names)


def test_a_model_served_by_the_wrong_runtime_voids_its_targets() -> None:
    outcomes = [
        _outcome(SERVICE, "iris", 1000),
        _outcome(SERVICE, "breast_cancer", 900),
        _outcome(SERVICE, "breast_cancer", 40, c=1, rows=ROWS),
        _outcome(SERVICE_SKLEARN, "breast_cancer", 10, c=1, rows=ROWS),
    ]
    served = {
        SERVICE: {"iris": "onnx", "breast_cancer": "sklearn"},
        SERVICE_SKLEARN: {"iris": "sklearn", "breast_cancer": "sklearn"},
    }
    assert wrong_runtime(served, SERVICE, "breast_cancer")
    assert not wrong_runtime(served, SERVICE_SKLEARN, "breast_cancer")
    assert not wrong_runtime({SERVICE: {"iris": None}}, SERVICE, "iris")  # unknown is not wrong
    assert not wrong_runtime(None, SERVICE, "iris")
    targets = evaluate(outcomes, [], MODELS, served)
    assert _named(targets, FLAT).status == "N/A"
    assert _named(targets, FLAT).value == 90.0
    rows = _named(targets, "breast_cancer 10000-row request rows/s, service vs service_sklearn")
    assert (rows.value, rows.status) == (4.0, "N/A")
    assert _named(evaluate(outcomes, [], MODELS), FLAT).status == "PASS"  # nothing reported


def test_default_run_includes_service_sklearn_and_bounds_the_runtime_cells() -> None:
    from bench.run import parse_args

    full, quick = parse_args([]), parse_args(["--quick"])
    assert full.servers[:2] == [SERVICE, SERVICE_SKLEARN]
    assert (full.runtime_budget, quick.runtime_budget) == (0.5, 0.3)
    assert parse_args(["--runtime-budget", "0.1"]).runtime_budget == 0.1
