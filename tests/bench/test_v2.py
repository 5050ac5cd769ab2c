"""The benchmark's Open Inference Protocol bodies: the service's own parser reads them back as
the same rows, for a numeric model and a mixed-type one; plan and targets include them."""

from pathlib import Path

import numpy as np
import pytest

from bench import v2, workload
from bench.alternating import Alternation
from bench.scenarios import SERVICE, Measurement, Outcome, Scenario, plan
from bench.shared_core import PairedComparison, PairRun
from bench.targets import V2_JSON_PAIR, v2_targets
from bench.wrk import Errors, Latency, WrkResult
from serving.dataplane import RowEncoder
from serving.oip.signature import Signature
from serving.oip.tensors import parse_request
from serving.store import Manifest, ModelStore
from training.run import train
from training.spec import shipped_spec


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    store = ModelStore(tmp_path_factory.mktemp("churn"))
    train(shipped_spec("churn"), store, echo=lambda _: None)
    return store.manifest("churn", 1)


@pytest.mark.parametrize("protocol", v2.PROTOCOLS)
def test_bodies_decode_to_the_same_rows(
    iris: Manifest, churn: Manifest, protocol: str, tmp_path: Path
) -> None:
    for manifest in (iris, churn):
        rows = workload.sample_rows(manifest, 5, seed=3)
        raw, header_length = v2.body(manifest, rows, protocol)
        request = parse_request(raw, str(header_length) if header_length else None)
        if protocol == v2.V2_BINARY:  # as tritonclient sends by default: every output, binary
            assert request.outputs is None
            assert request.binary_output
        else:
            assert [o.name for o in request.outputs or []] == ["predict"]
            assert not request.binary_output
        decoded = Signature(manifest, "sklearn", 100).rows(request.inputs)
        np.testing.assert_array_equal(decoded, RowEncoder(manifest).rows(rows))
        file = v2.write_bodies(tmp_path / f"{manifest.name}.{protocol}", [(raw, header_length)] * 2)
        assert v2.read_first(file) == (raw, header_length)


def test_plan_puts_v2_next_to_typed() -> None:
    scenarios = plan(
        ["iris"],
        [SERVICE],
        connections=[1, 100],
        baseline_connections=100,
        rows_per_request=10_000,
        rows_connections=1,
        v2_connections=[1],
    )
    assert [s.key for s in scenarios] == [
        "service/iris/row/c1",
        "service/iris/row/c1/v2json",
        "service/iris/row/c1/v2binary",
        "service/iris/row/c100",
        "service/iris/rows10000/c1",
        "service/iris/rows10000/c1/v2json",
        "service/iris/rows10000/c1/v2binary",
    ]
    assert scenarios[1].path == "/v2/models/iris/infer"


def _outcome(protocol: str, rps: float, rows: int = 1, c: int = 1) -> Outcome:
    result = WrkResult(
        duration_s=1.0,
        requests=round(rps),
        bytes=0,
        errors=Errors(0, 0, 0, 0, 0),
        latency=Latency(1, 1, 1, 1, 1, 1),
    )
    scenario = Scenario(SERVICE, "iris", c, rows, protocol=protocol)
    return Outcome(scenario, runs=(Measurement(result, 1.0, 0.1, 0.0),))


def test_v2_targets_are_ratios_to_typed() -> None:
    outcomes = [
        _outcome("typed", 1000),
        _outcome("v2json", 950),
        _outcome("v2binary", 800),
        _outcome("typed", 10, rows=10_000),
        _outcome("v2json", 12, rows=10_000),
        _outcome("v2binary", 29, rows=10_000),
    ]
    by_name = {t.name: t for t in v2_targets(outcomes, ["iris"])}
    single = by_name["iris 1-row req/s, v2json vs typed, c=1"]
    assert single.status == "PASS"
    assert single.value == pytest.approx(95.0)
    assert by_name["iris 1-row req/s, v2binary vs typed, c=1"].status == "INFO"
    rows = by_name["iris 10000-row request rows/s, v2binary vs typed rows"]
    assert rows.status == "MISS"
    assert rows.value == pytest.approx(2.9)
    assert v2_targets(outcomes[:1], ["iris"]) == []


def test_under_load_a_paired_comparison_decides_the_v2_json_target() -> None:
    outcomes = [
        _outcome("typed", 1000, c=100),
        _outcome("v2json", 800, c=100),  # the rounds: 80 %
    ]
    runs = tuple(PairRun(1000.0, 950.0, 200.0, 200.0 * r) for r in (1.04, 1.05, 1.06))
    pair = PairedComparison(V2_JSON_PAIR, SERVICE, SERVICE, "iris", 50, 3.0, runs)
    by_name = {t.name: t for t in v2_targets(outcomes, ["iris"], [pair])}
    decided = by_name["iris 1-row req/s, v2json vs typed, paired on one core"]
    assert (decided.goal, decided.status) == (">= 90 %", "PASS")
    assert decided.value == pytest.approx(100 / 1.05)
    rounds = by_name["iris 1-row req/s, v2json vs typed, c=100"]
    assert rounds.value == pytest.approx(80.0)
    assert (rounds.goal, rounds.status) == ("-", "INFO")


def test_at_c1_alternating_runs_decide_the_v2_json_target() -> None:
    outcomes = [_outcome("typed", 1000), _outcome("v2json", 700)]  # the rounds: 70 %
    low = Alternation(V2_JSON_PAIR, "iris", 1, 1.0, (0.95, 0.97, 0.93, 0.99))
    by_name = {t.name: t for t in v2_targets(outcomes, ["iris"], (), [low])}
    decided = by_name["iris 1-row req/s, v2json vs typed, c=1, alternating runs"]
    assert decided.value == pytest.approx(96.0)
    assert (decided.goal, decided.status) == (">= 90 %", "PASS")
    assert by_name["iris 1-row req/s, v2json vs typed, c=1"].status == "INFO"
    slower = Alternation(V2_JSON_PAIR, "iris", 1, 1.0, (0.85, 0.88))
    by_name = {t.name: t for t in v2_targets(outcomes, ["iris"], (), [slower])}
    assert by_name["iris 1-row req/s, v2json vs typed, c=1, alternating runs"].status == "MISS"
