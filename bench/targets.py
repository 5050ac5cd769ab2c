"""The issue's performance targets, evaluated as ratios within one run.

Absolute numbers depend on the machine; ratios against baselines measured on the same box in
the same run do much less. A target whose inputs were not measured is ``N/A``; comparisons
the issue sets no threshold for are reported as ``INFO``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bench.scenarios import BARE, BARE_RAW, NAIVE, SERVICE, InProcess, Outcome

Status = Literal["PASS", "MISS", "N/A", "INFO"]

VS_BARE_MODEL = "iris"
VS_BARE_MIN_RATIO = 0.85
VS_NAIVE_MODEL = "breast_cancer"
VS_NAIVE_MIN_RATIO = 50.0
CLEAN_CONNECTIONS = 1000
LOW_LOAD_CONNECTIONS = 1
LOW_LOAD_MAX_P50_MS = 3.0
RATIO_CONNECTIONS = 100


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: float | None
    unit: str
    status: Status

    @property
    def measured(self) -> str:
        if self.value is None:
            return "-"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "%":
            return f"{self.value:.1f} %"
        if self.unit == "errors":
            return f"{self.value:.0f} errors"
        return f"{self.value:.2f} {self.unit}"


def _find(
    outcomes: Sequence[Outcome], server: str, model: str, connections: int, rows: int = 1
) -> Outcome | None:
    for outcome in outcomes:
        s = outcome.scenario
        if (s.server, s.model, s.connections, s.rows_per_request) == (
            server,
            model,
            connections,
            rows,
        ):
            return outcome if outcome.result is not None else None
    return None


def _ratio(
    outcomes: Sequence[Outcome], model: str, baseline: str, connections: int
) -> float | None:
    service = _find(outcomes, SERVICE, model, connections)
    base = _find(outcomes, baseline, model, connections)
    if service is None or base is None or not base.requests_per_s:
        return None
    return (service.requests_per_s or 0.0) / base.requests_per_s


def _at_least(value: float | None, minimum: float) -> Status:
    return "N/A" if value is None else ("PASS" if value >= minimum else "MISS")


def evaluate(
    outcomes: Sequence[Outcome], in_process: Sequence[InProcess], models: Sequence[str]
) -> list[Target]:
    targets: list[Target] = []
    c = RATIO_CONNECTIONS
    status: Status
    for model in models:
        ratio = _ratio(outcomes, model, BARE, c)
        pct = None if ratio is None else 100 * ratio
        if model == VS_BARE_MODEL:
            status = _at_least(ratio, VS_BARE_MIN_RATIO)
            goal = f">= {100 * VS_BARE_MIN_RATIO:.0f} %"
        else:
            status, goal = ("N/A" if ratio is None else "INFO"), "-"
        targets.append(Target(f"{model} req/s vs bare POST, c={c}", goal, pct, "%", status))
    for model in models:
        ratio = _ratio(outcomes, model, BARE_RAW, c)
        if ratio is not None:  # opt-in baseline: no row unless it ran
            name = f"{model} req/s vs bare POST on the raw body, c={c}"
            targets.append(Target(name, "-", 100 * ratio, "%", "INFO"))
    for model in models:
        ratio = _ratio(outcomes, model, NAIVE, c)
        if model == VS_NAIVE_MODEL:
            status = _at_least(ratio, VS_NAIVE_MIN_RATIO)
            goal = f">= {VS_NAIVE_MIN_RATIO:.0f}x"
        else:
            status, goal = ("N/A" if ratio is None else "INFO"), "-"
        targets.append(Target(f"{model} req/s vs naive, c={c}", goal, ratio, "x", status))
    for model in models:
        outcome = _find(outcomes, SERVICE, model, CLEAN_CONNECTIONS)
        summed = None if outcome is None else outcome.errors
        errors = None if summed is None else summed.total
        targets.append(
            Target(
                f"{model} c={CLEAN_CONNECTIONS} socket errors + timeouts + non-2xx",
                "= 0",
                None if errors is None else float(errors),
                "errors",
                "N/A" if errors is None else ("PASS" if errors == 0 else "MISS"),
            )
        )
    for model in models:
        outcome = _find(outcomes, SERVICE, model, LOW_LOAD_CONNECTIONS)
        p50 = None if outcome is None or outcome.result is None else outcome.result.latency.p50
        fast: Status = "N/A" if p50 is None else ("PASS" if p50 < LOW_LOAD_MAX_P50_MS else "MISS")
        targets.append(
            Target(
                f"{model} p50 latency, c={LOW_LOAD_CONNECTIONS}",
                f"< {LOW_LOAD_MAX_P50_MS:g} ms",
                p50,
                "ms",
                fast,
            )
        )
    for local in in_process:
        rows_outcome = next(
            (
                o
                for o in outcomes
                if o.scenario.server == SERVICE
                and o.scenario.model == local.model
                and o.scenario.rows_per_request == local.rows
                and o.result is not None
            ),
            None,
        )
        rows_per_s = None if rows_outcome is None else rows_outcome.rows_per_s
        pct = None if rows_per_s is None else 100 * rows_per_s / local.rows_per_s
        targets.append(
            Target(
                f"{local.model} {local.rows}-row request rows/s vs in-process predict",
                "-",
                pct,
                "%",
                "N/A" if pct is None else "INFO",
            )
        )
    return targets
