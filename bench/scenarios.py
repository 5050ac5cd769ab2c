"""What one run measures: scenarios (server x model x load) and their outcomes."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.wrk import Errors, WrkResult

SERVICE = "service"
SERVICE_SKLEARN = "service_sklearn"
"""The service with ``SERVEWELL_RUNTIME=sklearn``: every model on scikit-learn."""
SERVICES = (SERVICE, SERVICE_SKLEARN)
"""Servers that run ``python -m serving`` (one per runtime setting)."""
BARE = "bare"
NAIVE = "naive"
BARE_RAW = "bare_raw"
BASELINES = (BARE, BARE_RAW, NAIVE)
"""The apps in ``bench/baselines.py``."""
SERVICE_QUIET = "service_quiet"
"""The service with metrics, drift tracking and the access log off (what they cost)."""
SERVICE_METRICS = "service_metrics"
"""The service with metrics and drift tracking but no access log (what the log costs). It
runs only in the shared-core comparisons (bench.shared_core), not in the rounds."""
RAY = "ray"
"""The service as Ray Serve replicas behind Ray's proxy (``bench/ray_serve.py``)."""
RAY_CONNECTIONS = (1, 100)
"""Loads at which the Ray scenario runs (when the service runs at them too)."""
SERVERS = (*SERVICES, *BASELINES, SERVICE_QUIET, RAY)
TYPED = "typed"
"""The service's own predict endpoint; the other protocols are in ``bench/v2.py``."""
V2_PROTOCOLS = ("v2json", "v2binary")
"""Open Inference Protocol requests to the service: JSON, and JSON + binary tensor data."""


@dataclass(frozen=True)
class Scenario:
    server: str
    model: str
    connections: int
    rows_per_request: int = 1
    """1: one record in ``{"instances": [...]}``; more: a ``{"rows": [...]}`` request."""
    protocol: str = TYPED
    """``typed`` (``/models/{name}/predict``) or one of ``V2_PROTOCOLS`` (``/v2/.../infer``)."""

    @property
    def is_rows(self) -> bool:
        return self.rows_per_request > 1

    @property
    def key(self) -> str:
        shape = f"rows{self.rows_per_request}" if self.is_rows else "row"
        key = f"{self.server}/{self.model}/{shape}/c{self.connections}"
        return key if self.protocol == TYPED else f"{key}/{self.protocol}"

    @property
    def is_v2(self) -> bool:
        return self.protocol != TYPED

    @property
    def path(self) -> str:
        if self.is_v2:
            return f"/v2/models/{self.model}/infer"
        return f"/models/{self.model}/predict"


def plan(
    models: Sequence[str],
    servers: Iterable[str],
    *,
    connections: Sequence[int],
    baseline_connections: int,
    rows_per_request: int,
    rows_connections: int,
    v2_connections: Sequence[int] = (),
) -> list[Scenario]:
    """All scenarios in the order they run within a round.

    Per model, runs that are compared with each other are adjacent, so a change in background
    load between them is less likely: the baselines, the service and the service on
    scikit-learn at the baseline load; the rows request of the service and of the service on
    scikit-learn. The service on scikit-learn runs only those two comparisons. With
    ``v2_connections``, the service's Open Inference Protocol requests (JSON, binary) follow
    its typed single-row run at those loads, and its typed rows request.
    """
    wanted = set(servers)
    out: list[Scenario] = []
    for model in models:
        for c in sorted({*connections, baseline_connections, *v2_connections}):
            if c == baseline_connections:
                out += [Scenario(base, model, c) for base in BASELINES if base in wanted]
            if SERVICE in wanted and c in connections:
                out.append(Scenario(SERVICE, model, c))
            if c == baseline_connections and SERVICE_QUIET in wanted:
                out.append(Scenario(SERVICE_QUIET, model, c))
            if RAY in wanted and c in connections and c in RAY_CONNECTIONS:
                out.append(Scenario(RAY, model, c))
            if SERVICE in wanted and c in v2_connections:
                out += [Scenario(SERVICE, model, c, protocol=p) for p in V2_PROTOCOLS]
            if c == baseline_connections and SERVICE_SKLEARN in wanted:
                out.append(Scenario(SERVICE_SKLEARN, model, c))
        if rows_per_request > 1:
            out += [
                Scenario(server, model, rows_connections, rows_per_request)
                for server in SERVICES
                if server in wanted
            ]
            if SERVICE in wanted and v2_connections:
                out += [
                    Scenario(SERVICE, model, rows_connections, rows_per_request, protocol=p)
                    for p in V2_PROTOCOLS
                ]
    return out


@dataclass(frozen=True)
class Measurement:
    """One wrk run of a scenario, with the CPU time everyone used meanwhile."""

    result: WrkResult
    server_cpu_s: float
    """User + system CPU of the server's processes (workers included)."""
    wrk_cpu_s: float
    other_cpu_s: float
    """Everything else on the machine (noise: ideally about 0)."""

    def cpu_percent(self, cpu_s: float) -> float | None:
        """CPU seconds over the run as % of one core (200 % = both cores of a 2-core box)."""
        duration = self.result.duration_s
        return 100.0 * cpu_s / duration if duration > 0 else None


@dataclass(frozen=True)
class Outcome:
    """All rounds of one scenario; reported figures come from the median round by req/s."""

    scenario: Scenario
    runs: tuple[Measurement, ...] = ()
    error: str | None = None
    """Why the scenario failed (then no figure of it counts, even from earlier rounds)."""
    predictions_match: bool | None = None
    """Whether the service's answer to the first body equals in-process ``predict`` (rows only)."""

    @property
    def median(self) -> Measurement | None:
        if self.error is not None or not self.runs:
            return None
        ranked = sorted(self.runs, key=lambda m: m.result.requests_per_s)
        return ranked[(len(ranked) - 1) // 2]  # lower median: a real run, never an average

    @property
    def result(self) -> WrkResult | None:
        median = self.median
        return None if median is None else median.result

    @property
    def errors(self) -> Errors | None:
        """Errors summed over every round (a single failed request anywhere counts)."""
        if self.result is None:
            return None
        return Errors(
            connect=sum(m.result.errors.connect for m in self.runs),
            read=sum(m.result.errors.read for m in self.runs),
            write=sum(m.result.errors.write for m in self.runs),
            timeout=sum(m.result.errors.timeout for m in self.runs),
            status=sum(m.result.errors.status for m in self.runs),
        )

    @property
    def requests_per_s(self) -> float | None:
        return None if self.result is None else self.result.requests_per_s

    @property
    def rows_per_s(self) -> float | None:
        rps = self.requests_per_s
        return None if rps is None else rps * self.scenario.rows_per_request

    @property
    def spread(self) -> float | None:
        """(max - min) / median of req/s over the rounds; None with fewer than two rounds."""
        rps = self.requests_per_s
        if rps is None or len(self.runs) < 2 or rps <= 0:
            return None
        rates = [m.result.requests_per_s for m in self.runs]
        return (max(rates) - min(rates)) / rps


@dataclass(frozen=True)
class InProcess:
    """``model.predict`` called directly in the benchmark process, no HTTP."""

    model: str
    rows: int
    batch_s: float
    """Median seconds for one ``predict`` of ``rows`` rows."""
    single_row_ms: float
    """Median milliseconds for one ``predict`` of a single row."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.batch_s
