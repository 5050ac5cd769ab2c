"""What the benchmark measures, as data: servers, scenarios (server x request x load), targets
(the ratio of two scenarios' figures, or one scenario's figure, against a threshold; INFO
without one). ``paired`` targets are decided by paired runs on one shared core (paired.py).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from bench.grpc_load import METHOD
from serving.settings import default_workers

Kind = Literal["service", "bare", "naive", "hello", "mlserver", "ray"]
Request = Literal["typed", "explain", "rows", "v2json", "v2binary", "mlserver", "grpc"]
V2: tuple[Request, Request] = ("v2json", "v2binary")
Figure = Literal[
    "req/s",
    "rows/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "capture rows/s",
    "dropped",
    "queue max",
    "rss MiB",
]

# What a user gets: metrics, drift tracking and a JSON access line per request really written.
OBSERVED = {"SERVEWELL_METRICS": "true", "SERVEWELL_ACCESS_LOG": "true"}
OBSERVED |= {"SERVEWELL_LOG_LEVEL": "info", "SERVEWELL_LOG_FORMAT": "json"}
QUIET = {"SERVEWELL_METRICS": "false", "SERVEWELL_ACCESS_LOG": "false"}
OBSERVED["SERVEWELL_CAPTURE"] = QUIET["SERVEWELL_CAPTURE"] = "none"  # the default, whatever is set
CAPTURE_QUEUE = 100_000
# Every answered request kept, in SQLite in the run's temp dir ({run}: a name of the server's own).
CAPTURE = {**OBSERVED, "SERVEWELL_RUNTIME": "auto", "SERVEWELL_CAPTURE": "all"}
CAPTURE |= {"SERVEWELL_CAPTURE_URL": "sqlite:///{run}.capture.sqlite"}
CAPTURE |= {"SERVEWELL_CAPTURE_QUEUE_ROWS": str(CAPTURE_QUEUE)}


MANY = 100
ONE_PROCESS = {"SERVEWELL_WORKERS": "1"}
"""Models served by ``service_many``."""


@dataclass(frozen=True)
class Server:
    name: str
    kind: Kind = "service"
    env: Mapping[str, str] = field(default_factory=dict)
    """``SERVEWELL_*`` settings (an inherited value must not change what a server measures)."""
    baseline: bool = False
    """Run ``python -m serving`` of the ``--baseline-ref`` commit."""
    shadow: bool = False
    """Serve a store where each model's version is shadowed by a copy of itself at 100 %."""
    many: int = 0
    """Serve this many models: the store's, and copies of iris under other names."""


SERVERS = {
    s.name: s
    for s in (
        Server("service", env={**OBSERVED, "SERVEWELL_RUNTIME": "auto"}),
        Server("service@base", env={**OBSERVED, "SERVEWELL_RUNTIME": "auto"}, baseline=True),
        Server("service_sklearn", env={**OBSERVED, "SERVEWELL_RUNTIME": "sklearn"}),
        Server("service_metrics", env={**OBSERVED, "SERVEWELL_ACCESS_LOG": "false"}),
        Server("service_capture", env=CAPTURE),
        Server("service_shadow", env={**OBSERVED, "SERVEWELL_RUNTIME": "auto"}, shadow=True),
        Server("service_quiet", env={**QUIET, "SERVEWELL_LOG_LEVEL": "warning"}),
        # As the peers comparison always ran it: defaults, no access lines at level warning.
        Server("servewell", env={"SERVEWELL_RUNTIME": "auto", "SERVEWELL_LOG_LEVEL": "warning"}),
        Server("service_many", env={**OBSERVED, "SERVEWELL_RUNTIME": "auto"}, many=MANY),
        # One server process and its pool: the unit memory is counted in.
        Server("service_one", env={**OBSERVED, "SERVEWELL_RUNTIME": "auto", **ONE_PROCESS}),
        Server("bare", kind="bare"),
        Server("hello", kind="hello"),
        Server("naive", kind="naive"),
        Server("mlserver", kind="mlserver"),
        Server("ray", kind="ray", env={"SERVEWELL_LOG_LEVEL": "warning"}),
    )
}


@dataclass(frozen=True)
class Scenario:
    model: str
    server: str
    request: Request
    connections: int
    rows: int = 1
    beside: "Scenario | None" = None
    """Load on the same server at the same time, not measured (what it costs the other)."""

    @property
    def key(self) -> str:
        shape = f"{self.request}{self.rows}" if self.rows > 1 else self.request
        key = f"{self.server}/{self.model}/{shape}/c{self.connections}"
        if self.beside is not None:
            key += f" + {self.beside.model}/{self.beside.request}/c{self.beside.connections}"
        return key

    @property
    def path(self) -> str:
        """The HTTP path, or gRPC's method (:meth:`bench.servers.Running.address`)."""
        if self.request == "grpc":
            return METHOD
        typed = self.request in ("typed", "explain", "rows")
        return f"/models/{self.model}/predict" if typed else f"/v2/models/{self.model}/infer"


@dataclass(frozen=True)
class Target:
    name: str
    a: Scenario
    b: Scenario | None
    """What ``a`` is measured against; None: ``a``'s figure itself."""
    figure: Figure
    at_least: float | None = None
    paired: bool = False
    """Decided by paired runs on one shared core (``a`` and ``b`` loaded at once, each with
    its scenario's connections)."""
    at_most: float | None = None


@dataclass
class Suite:
    scenarios: list[Scenario]
    targets: list[Target]


ROWS = 10_000
EXPLAINED = ("iris", "breast_cancer", "diabetes", "churn")
"""The shipped models, each measured explained and plain whatever ``--models`` says (one
method and space each: multi-class logits, forest probabilities, a regression, one-hot)."""
PAIR = 50
"""Connections per server of a pair: both load at once, 100 in all, as the rounds' c=100."""


def main_suite(models: Sequence[str], baseline_ref: str | None = None) -> Suite:
    """``make bench``: the service against itself on scikit-learn, the baselines, its other
    request forms and its observability, per model."""
    suite = Suite([], [])
    for m in models:
        typed = {c: Scenario(m, "service", "typed", c) for c in (1, 100, 1000)}
        v2j, v2b = ({c: replace(typed[c], request=r) for c in (1, 100)} for r in V2)
        t100, rows = typed[100], Scenario(m, "service", "rows", 1, ROWS)
        bare, naive, quiet, sk100, hello = (
            replace(t100, server=s)
            for s in ("bare", "naive", "service_quiet", "service_sklearn", "hello")
        )
        sk_rows = replace(rows, server="service_sklearn")
        v2j_rows, v2b_rows = (replace(rows, request=r) for r in V2)
        # Runs that are compared sit next to each other: they see about the same background.
        suite.scenarios.extend([typed[1], v2j[1], v2b[1], hello, bare, naive, t100, quiet])
        # For iris, the raw ASGI app at c=1 next to the service: the box's own floor.
        hello1 = replace(typed[1], server="hello") if m == "iris" else None
        if hello1 is not None:
            suite.scenarios.insert(suite.scenarios.index(typed[1]) + 1, hello1)
        suite.scenarios.append(v2j[100])
        suite.scenarios.extend([v2b[100], sk100, typed[1000], rows, sk_rows, v2j_rows, v2b_rows])
        # The writer falls behind 10 000-row requests (its rows/s then is what it can write).
        capture = [replace(s, server="service_capture") for s in (rows, typed[1000])]
        suite.scenarios += capture
        pair = Scenario(m, "service", "typed", PAIR)
        p_metrics, p_quiet = (replace(pair, server=s) for s in ("service_metrics", "service_quiet"))
        p_v2j, p_capture = replace(pair, request="v2json"), replace(pair, server="service_capture")
        p_shadow = replace(pair, server="service_shadow")
        grpc = {c: replace(typed[c], request="grpc") for c in (1, 100)}
        p_grpc, grpc_rows = replace(pair, request="grpc"), replace(rows, request="grpc")
        suite.scenarios.extend([grpc[1], grpc[100], grpc_rows])
        vs_bare = 0.85 if m == "iris" else None
        vs_hello, p50 = (0.5, 0.25) if m == "iris" else (None, 3.0)
        vs_naive = 50.0 if m == "breast_cancer" else None
        suite.targets += [
            Target(f"{m}: c=100, service vs raw ASGI hello", t100, hello, "req/s", vs_hello),
            Target(f"{m}: c=100, service vs bare FastAPI POST", t100, bare, "req/s", vs_bare),
            Target(f"{m}: c=100, service vs naive predict", t100, naive, "req/s", vs_naive),
            Target(f"{m}: c=100, ONNX Runtime vs scikit-learn", t100, sk100, "req/s"),
            Target(f"{m}: c=1000, errors", typed[1000], None, "errors", at_most=0),
            Target(f"{m}: c=1, p50 latency", typed[1], None, "p50 ms", at_most=p50),
            Target(f"{m}: {ROWS} rows, ONNX Runtime vs scikit-learn", rows, sk_rows, "rows/s", 2.0),
            Target(f"{m}: {ROWS} rows, v2 binary vs typed", v2b_rows, rows, "rows/s", 3.0),
            Target(f"{m}: {ROWS} rows, v2 JSON vs typed", v2j_rows, rows, "rows/s"),
            Target(f"{m}: c=1, v2 binary (all outputs) vs typed", v2b[1], typed[1], "req/s"),
            Target(f"{m}: c=100, v2 binary (all outputs) vs typed", v2b[100], t100, "req/s"),
            Target(f"{m}: access log, throughput kept", pair, p_metrics, "req/s", 0.95, True),
            Target(
                f"{m}: metrics + access log, throughput kept", pair, p_quiet, "req/s", paired=True
            ),
            Target(f"{m}: single row, v2 JSON vs typed", p_v2j, pair, "req/s", 0.90, True),
            Target(f"{m}: capture, throughput kept", p_capture, pair, "req/s", 0.90, True),
            Target(f"{m}: capture writer rows/s", capture[0], None, "capture rows/s", 20_000),
            Target(f"{m}: shadow at 100 %, throughput kept", p_shadow, pair, "req/s", 0.85, True),
            Target(f"{m}: single row, gRPC vs typed", p_grpc, pair, "req/s", 1.0, True),
            Target(f"{m}: c=100, gRPC vs typed (Python client)", grpc[100], t100, "req/s"),
            Target(f"{m}: c=1, gRPC vs typed", grpc[1], typed[1], "p50 ms"),
            Target(f"{m}: {ROWS} rows, gRPC raw vs typed", grpc_rows, rows, "rows/s", 3.0),
        ]
        if hello1 is not None:  # the absolute p50 goal read against the box's floor
            floor = Target(f"{m}: c=1, p50 vs raw ASGI hello", typed[1], hello1, "p50 ms")
            suite.targets.append(floor)
        for s in capture:
            name = f"{m}: capture, {s.request} c={s.connections}: "
            # The bound is each server process's; the gauge adds up the processes' queues.
            most = CAPTURE_QUEUE * default_workers()
            bounded = Target(name + "queue max rows", s, None, "queue max", at_most=most)
            suite.targets += [bounded, Target(name + "rows dropped", s, None, "dropped")]
        if baseline_ref is not None:
            # Single rows load the event loop; for 10 000 rows a few connections suffice.
            for a in (pair, p_v2j, replace(rows, connections=4), replace(v2b_rows, connections=4)):
                shape = "single row" if a.rows == 1 else f"{ROWS} rows"
                name = f"{m}: {shape} {a.request}, this commit vs {baseline_ref}"
                base = replace(a, server="service@base")
                suite.targets.append(Target(name, a, base, "req/s", 0.97, True))
    for m in EXPLAINED:
        suite.targets += _explain_targets(suite, m)
    if "breast_cancer" in models:
        suite.targets += _bulk_targets(suite)
    if "iris" in models:
        suite.targets += _many_targets(suite)
        suite.targets += _memory_targets(suite)
    if {"iris", "breast_cancer"} <= set(models):
        # Explaining the forest on one connection beside plain iris predictions at c=PAIR.
        iris = Scenario("iris", "service", "typed", PAIR)
        beside = replace(iris, beside=Scenario("breast_cancer", "service", "explain", 1))
        suite.scenarios += [iris, beside]
        name = "iris: c=50 plain beside breast_cancer explained c=1, throughput kept"
        suite.targets.append(Target(name, beside, iris, "req/s", 0.90))
        # None of them may wait behind an explanation (a process's first takes seconds).
        name = "iris: c=50 plain beside breast_cancer explained c=1, errors"
        suite.targets.append(Target(name, beside, None, "errors", at_most=0))
        # Under ONNX Runtime the model's cost should no longer show in single-row throughput.
        bc, iris = (Scenario(m, "service", "typed", PAIR) for m in ("breast_cancer", "iris"))
        vs_iris = Target("breast_cancer vs iris, single row", bc, iris, "req/s", 0.85, True)
        suite.targets.append(vs_iris)
    return suite


def _explain_targets(suite: Suite, m: str) -> list[Target]:
    """Explained single rows (latency) and 100-row requests (rows/s) next to plain ones."""
    one, hundred = Scenario(m, "service", "typed", 1), Scenario(m, "service", "typed", 4, 100)
    one_x, hundred_x = (replace(s, request="explain") for s in (one, hundred))
    plain = [] if one in suite.scenarios else [one]  # a model beside --models: not measured yet
    suite.scenarios += [*plain, one_x, hundred, hundred_x]
    at_most = 20.0 if m == "breast_cancer" else None
    return [
        Target(f"{m}: c=1, explained p50", one_x, None, "p50 ms", at_most=at_most),
        Target(f"{m}: c=1, explained vs plain", one_x, one, "p50 ms"),
        Target(f"{m}: 100 rows c=4, explained vs plain", hundred_x, hundred, "rows/s"),
    ]


def _bulk_targets(suite: Suite) -> list[Target]:
    """The forest on 1 000-row requests from 8 clients, and 10 000-row ones (2.4 MB bodies)
    that a box which is not saturated must not shed."""
    bulk = Scenario("breast_cancer", "service", "rows", 8, 1000)
    big = replace(bulk, rows=ROWS)
    suite.scenarios += [bulk, big]
    return [
        Target("breast_cancer: 1000 rows c=8, rows/s", bulk, None, "rows/s", 500_000),
        Target(f"breast_cancer: {ROWS} rows c=8, errors (shed)", big, None, "errors", at_most=0),
    ]


def _many_targets(suite: Suite) -> list[Target]:
    """iris single rows with MANY models served against one store of the shipped ones."""
    few = Scenario("iris", "service", "typed", 100)
    many = replace(few, server="service_many")
    suite.scenarios += [*([] if few in suite.scenarios else [few]), many]
    name = f"iris: c=100, {MANY} models vs the shipped ones, "
    return [
        Target(name + "req/s", many, few, "req/s", 0.95),
        Target(name + "p99", many, few, "p99 ms", at_most=1.3),
    ]


def _memory_targets(suite: Suite) -> list[Target]:
    """The resident memory of one server process and its pool serving the store (the shipped
    models), after a load of iris single rows."""
    one = Scenario("iris", "service_one", "typed", 100)
    suite.scenarios.append(one)
    name = "memory: one server process and its pool, RSS MiB"
    return [Target(name, one, None, "rss MiB", at_most=200)]


def peers_suite(models: Sequence[str]) -> Suite:
    """``make bench-peers``: servewell against Seldon MLServer on the same joblib files."""
    suite = Suite([], [])
    for c in (100, 1000):  # overload last in a round
        for m in models:
            ours = Scenario(m, "servewell", "typed", c)
            theirs = replace(ours, server="mlserver", request="mlserver")
            suite.scenarios += [ours, theirs]
            vs = Target(f"{m}: c={c}, servewell vs MLServer", ours, theirs, "req/s")
            errors = Target(f"{m}: c=1000, servewell errors", ours, None, "errors", at_most=0)
            suite.targets += [replace(vs, at_least=3.0)] if c == 100 else [vs, errors]
    return suite


def ray_suite(models: Sequence[str]) -> Suite:
    """``make bench-ray``: the service as Ray Serve replicas behind Ray's proxy vs one box."""
    suite = Suite([], [])
    for m in models:
        for c in (1, 100):
            box, ray = Scenario(m, "service", "typed", c), Scenario(m, "ray", "typed", c)
            suite.scenarios += [box, ray]
            name = f"{m}: c={c} {{}}, Ray Serve vs one box"
            suite.targets.extend(Target(name.format(f), ray, box, f) for f in ("req/s", "p50 ms"))
    return suite
