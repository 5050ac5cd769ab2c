"""Load benchmark of the servewell service against baselines, with wrk on loopback.

    .venv/bin/python bench/run.py            # full run, about 6 minutes
    .venv/bin/python bench/run.py --quick    # about 2 minutes, noisier

Trains the default models if the store is empty, times one batch call of every model under
scikit-learn and ONNX Runtime in this process (``bench/runtimes.py``), starts the service
(ONNX Runtime where parity was verified), the service forced onto scikit-learn and the
baseline apps side by side on free loopback ports, measures every scenario with wrk (one
warm-up run, then
``--rounds`` measured runs, the scenarios interleaved round by round), prints a table with the
issue's targets as ratios computed in this run, and writes ``bench/results/<UTC timestamp>``
``.json`` and ``.png`` plus copies named ``latest``. See ``bench/README.md``.

Exit status: 0 when every scenario ran, 1 when one could not be measured (or, with
``--fail-on-miss``, when a target is missed), 2 when wrk or a model is missing. The script
never installs anything: without wrk it prints how to install it.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (``python bench/run.py``): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    alternating,
    measure,
    ray_serve,
    report,
    runtimes,
    servers,
    shared_core,
    targets,
    v2,
    wrk,
)
from bench.scenarios import (
    BARE,
    NAIVE,
    RAY,
    SERVERS,
    SERVICE,
    SERVICE_METRICS,
    SERVICE_QUIET,
    SERVICE_SKLEARN,
    SERVICES,
    InProcess,
    Outcome,
    Scenario,
    plan,
)
from bench.workload import served_version
from serving.store import ModelStore, StoreError

ROOT = servers.ROOT
DEFAULT_MODELS = ("iris", "breast_cancer")
# The Ray scenario runs whenever the ray extra is installed.
DEFAULT_SERVERS = (
    SERVICE,
    SERVICE_SKLEARN,
    BARE,
    NAIVE,
    SERVICE_QUIET,
    *([RAY] if ray_serve.available() else []),
)
RESULTS_DIR = ROOT / "bench" / "results"
QUIET_ENV = {"SERVEWELL_METRICS": "false", "SERVEWELL_ACCESS_LOG": "false"}
"""``service_quiet``: the service without metrics, drift tracking and access log."""
OBSERVED_ENV = {
    "SERVEWELL_METRICS": "true",
    "SERVEWELL_ACCESS_LOG": "true",
    "SERVEWELL_LOG_LEVEL": "info",
    "SERVEWELL_LOG_FORMAT": "json",
}
"""``service``: with them (the defaults), whatever the environment says: a JSON access line
per request into the server's log file."""
METRICS_ENV = {**OBSERVED_ENV, "SERVEWELL_ACCESS_LOG": "false"}
"""``service_metrics``: as ``service`` but without the access log (what the log costs)."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in _csv(text)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="wrk load benchmark: the service (ONNX Runtime, and forced onto "
        "scikit-learn) vs a bare FastAPI POST and a naive inline-predict endpoint, plus the "
        "in-process batch cost of each runtime, on this box, in one run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 2 s per scenario, 1 s warm-up"
    )
    parser.add_argument("--rounds", type=int, help="measured runs per scenario, interleaved (3)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (5)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each scenario (2)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1; 2 cores shared)")
    parser.add_argument(
        "--timeout", type=float, default=2.0, help="wrk request timeout, s (2, wrk's default)"
    )
    parser.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS), help="model names")
    parser.add_argument(
        "--servers",
        type=_csv,
        default=list(DEFAULT_SERVERS),
        help=f"any of {','.join(SERVERS)} (default {','.join(DEFAULT_SERVERS)})",
    )
    parser.add_argument(
        "--connections", type=_ints, default=[1, 100, 1000], help="service loads (1,100,1000)"
    )
    parser.add_argument(
        "--baseline-connections",
        type=int,
        default=100,
        help="load of the baselines and of service_sklearn's single-row runs (100)",
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the rows request")
    parser.add_argument(
        "--rows-connections", type=int, default=1, help="concurrent rows requests (1)"
    )
    parser.add_argument(
        "--v2-connections",
        type=_ints,
        default=[1, 100],
        help="loads of the service's single-row Open Inference Protocol runs (JSON and binary) "
        "next to its typed ones; the rows request runs over both too (1,100; empty: no v2)",
    )
    parser.add_argument(
        "--runtime-models",
        type=_csv,
        help="models timed in-process under each runtime (default: every model in the store)",
    )
    parser.add_argument(
        "--runtime-budget",
        type=float,
        help="seconds per in-process runtime cell (model x runtime x batch size; 0.5, quick 0.3)",
    )
    parser.add_argument(
        "--no-runtimes", action="store_true", help="skip the in-process runtime comparison"
    )
    parser.add_argument(
        "--store", type=Path, help="model store (default: $SERVEWELL_STORE, else models/)"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="do not run `training ensure-default` first"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--ray-config", type=Path, default=ray_serve.DEFAULT_CONFIG, help="Serve config of ray"
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="server start, s")
    parser.add_argument(
        "--backlog",
        type=int,
        default=2048,
        help="baselines' listen backlog (2048: uvicorn's default, which the service uses)",
    )
    parser.add_argument(
        "--pair-runs",
        type=int,
        help="paired runs per shared-core comparison (what metrics and the access log cost; "
        "8, quick 4; 0: none)",
    )
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 1 when a target is missed"
    )
    args = parser.parse_args(argv)
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown --servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1 or args.duration < 1 or args.threads < 1:
        parser.error("--rounds, --duration and --threads must be at least 1")
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.runtime_budget is None:
        args.runtime_budget = 0.3 if args.quick else 0.5
    if args.pair_runs is None:
        args.pair_runs = 4 if args.quick else 8
    if args.pair_runs < 0 or args.pair_runs % 4:
        parser.error(
            "--pair-runs must be a multiple of 4: half with each instance pair, each server's "
            "wrk starting first as often"
        )
    return args


def _store_path(arg: Path | None) -> Path:
    if arg is not None:
        return arg.resolve()
    return Path(os.environ.get("SERVEWELL_STORE", str(ROOT / "models"))).resolve()


def ensure_default_models(store: Path) -> None:
    """``python -m training ensure-default``: trains the shipped models into an empty store."""
    cmd = [sys.executable, "-m", "training", "ensure-default"]
    env = {**os.environ, "SERVEWELL_STORE": str(store)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(
            f"warning: `{' '.join(cmd[1:])}` failed ({proc.returncode}); using the store as is:\n"
            + (proc.stderr or proc.stdout).strip()[-1500:],
            file=sys.stderr,
        )


def _first_line(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def environment(
    wrk_path: str, store: Path, versions: dict[str, int], load_average: tuple[float, float, float]
) -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages: dict[str, str | None] = {}
    for name in (
        "fastapi",
        "uvicorn",
        "pydantic",
        "scikit-learn",
        "numpy",
        "onnxruntime",
        "skl2onnx",
        "uvloop",
        "httptools",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(load_average),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": _first_line([wrk_path, "--version"]),
        "git_commit": _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "store": str(store),
        "model_versions": versions,
    }


def _progress(label: str, key: str, outcome: Outcome) -> None:
    if outcome.error is not None:
        print(f"{label} {key}: FAILED: {outcome.error}", flush=True)
        return
    r = outcome.runs[-1].result
    print(
        f"{label} {key}: {r.requests_per_s:,.0f} req/s, p50 {r.latency.p50:.2f} ms, "
        f"p99 {r.latency.p99:.2f} ms, errors {r.errors.total}",
        flush=True,
    )


def _spec(name: str, store: Path, models: list[str], backlog: int) -> servers.ServerSpec:
    if name == SERVICE:
        return servers.service_spec(store, name=SERVICE, runtime="auto", extra_env=OBSERVED_ENV)
    if name == SERVICE_SKLEARN:
        return servers.service_spec(store, name=SERVICE_SKLEARN, runtime="sklearn")
    if name == SERVICE_QUIET:
        return servers.service_spec(store, name=SERVICE_QUIET, extra_env=QUIET_ENV)
    if name == SERVICE_METRICS:
        return servers.service_spec(store, name=SERVICE_METRICS, extra_env=METRICS_ENV)
    return servers.baseline_spec(name, store, models, backlog)


def _start_servers(
    names: list[str], args: argparse.Namespace, store: Path, stack: ExitStack, log_dir: Path
) -> dict[str, servers.RunningServer | str]:
    """Every server the plan needs, running side by side (idle ones cost no CPU), or why not."""
    running: dict[str, servers.RunningServer | str] = {}
    for name in names:
        start: Callable[[], servers.RunningServer]
        if name == RAY:
            start = partial(ray_serve.start, store, log_dir, args.ready_timeout, args.ray_config)
        else:
            spec = _spec(name, store, args.models, args.backlog)
            start = partial(servers.start, spec, log_dir, args.ready_timeout)
        running[name] = _start_one(name, start, stack)
    return running


def _start_one(
    label: str, start: Callable[[], servers.RunningServer], stack: ExitStack
) -> servers.RunningServer | str:
    """A started server (stopped with ``stack``), or the first line of why it did not start."""
    print(f"starting {label} ...", flush=True)
    try:
        server: servers.RunningServer = start()
    except servers.ServerError as exc:
        print(str(exc), file=sys.stderr)
        return str(exc).splitlines()[0]
    stack.callback(server.stop)
    return server


def _measure_rounds(
    scenarios: list[Scenario],
    running: dict[str, servers.RunningServer | str],
    bodies: measure.Bodies,
    load: measure.Load,
    rounds: int,
    expected: dict[str, list[Any]],
) -> list[Outcome]:
    """Check each scenario once, then measure all of them round after round.

    Rounds interleave the scenarios in time, so a burst of background load hits one round of
    several scenarios rather than every round of one; the report takes the median round.
    """
    outcomes: dict[str, Outcome] = {}
    for r in range(rounds):
        for i, s in enumerate(scenarios, 1):
            label = f"[round {r + 1}/{rounds}, {i}/{len(scenarios)}]"
            server = running[s.server]
            if r == 0:
                if isinstance(server, str):
                    outcomes[s.key] = Outcome(s, error=f"{s.server} did not start: {server}")
                else:
                    want = expected.get(s.model) if s.is_rows else None
                    outcomes[s.key] = measure.check(server, s, bodies, load, want)
            outcome = outcomes[s.key]
            if outcome.error is None and not isinstance(server, str):
                try:
                    m = measure.measure_once(server, s, bodies, load, warm_up=r == 0)
                    outcome = replace(outcome, runs=(*outcome.runs, m))
                except wrk.WrkError as exc:
                    outcome = replace(outcome, error=str(exc))
                    if server.process.poll() is not None:
                        print(f"{s.server} died; log tail:\n{server.log_tail()}", file=sys.stderr)
                outcomes[s.key] = outcome
                _progress(label, s.key, outcome)
            elif r == 0:
                _progress(label, s.key, outcome)
    return [outcomes[s.key] for s in scenarios]


PAIR_CONNECTIONS = 50
"""Connections to each server of a pair (both load at once: 100 in all, as the rounds)."""
PAIR_DURATION_S = 3.0
PAIR_SERVERS = (SERVICE_QUIET, SERVICE_METRICS, SERVICE)
PAIR_START_ORDER = [(n, 1) for n in PAIR_SERVERS] + [(n, 2) for n in reversed(PAIR_SERVERS)]
"""Two instances of each server, started in mirrored order: of two identical servers, the one
started first measured 1-2 % more CPU per request in A/A pairs, so each comparison runs once
with the service started after its baseline and once before, and the bias cancels out."""


def _paired(
    args: argparse.Namespace,
    store: Path,
    bodies: measure.Bodies,
    load: measure.Load,
    log_dir: Path,
) -> list[shared_core.PairedComparison]:
    """What the access log, and metrics + access log, cost: per model, ``service`` against
    ``service_metrics`` and against ``service_quiet``, paired on one shared core, half of the
    runs with each instance pair. Its own fresh servers, stopped before the rounds."""
    pairs = [
        (targets.ACCESS_LOG_PAIR, SERVICE_METRICS),
        (targets.OBSERVED_PAIR, SERVICE_QUIET),
    ]
    out: list[shared_core.PairedComparison] = []
    with ExitStack() as stack:
        running: dict[tuple[str, int], servers.RunningServer | str] = {}
        for name, instance in PAIR_START_ORDER:
            spec = replace(_spec(name, store, args.models, args.backlog), name=f"{name}-{instance}")
            running[(name, instance)] = _start_one(
                f"{spec.name} (paired runs)",
                partial(servers.start, spec, log_dir, args.ready_timeout),
                stack,
            )
        for model in args.models:
            scenario = Scenario(SERVICE, model, targets.RATIO_CONNECTIONS)
            bodies_file = bodies.prepare(scenario, load.single_row_bodies)
            for name, baseline in pairs:
                print(f"[paired] {name}: {baseline} vs {SERVICE}, {model} ...", flush=True)
                couples = [(running[(baseline, i)], running[(SERVICE, i)]) for i in (1, 2)]
                same = shared_core.PairLoad(scenario.path, bodies_file)
                comparison = _compare_halves(
                    name, (baseline, SERVICE), model, couples, same, None, args, load
                )
                _say_result(
                    "paired",
                    name,
                    model,
                    comparison.error,
                    comparison.throughput_ratio,
                    f"throughput {{}} of {baseline}",
                )
                out.append(comparison)
        services = (running[(SERVICE, 1)], running[(SERVICE, 2)])
        for name, model, a_load, b_load in _workload_pairs(args, bodies, load):
            out.append(_paired_workloads(name, model, services, a_load, b_load, args, load))
    return out


def _say_result(
    tag: str, name: str, model: str, error: str | None, ratio: float | None, what: str
) -> None:
    """One progress line with a comparison's outcome: its error, or ``what`` with the ratio
    (as a percentage) in its ``{}``."""
    shown = f"{100 * (ratio or 0):.1f} %"
    print(f"[{tag}] {name}, {model}: " + (error or what.format(shown)), flush=True)


def _workload_pairs(
    args: argparse.Namespace, bodies: measure.Bodies, load: measure.Load
) -> list[tuple[str, str, shared_core.PairLoad, shared_core.PairLoad]]:
    """(name, model, A's load, B's load) of the comparisons of two workloads on the service:
    issue 4's breast_cancer vs iris (typed single rows), issue 7's v2 JSON vs typed."""

    def typed(model: str) -> shared_core.PairLoad:
        scenario = Scenario(SERVICE, model, targets.RATIO_CONNECTIONS)
        return shared_core.PairLoad(scenario.path, bodies.prepare(scenario, load.single_row_bodies))

    pairs = []
    flat = (targets.FLAT_REFERENCE_MODEL, targets.FLAT_MODEL)
    if all(m in args.models for m in flat):
        pairs.append((targets.FLAT_PAIR, targets.FLAT_MODEL, typed(flat[0]), typed(flat[1])))
    if args.v2_connections:
        for model in args.models:
            scenario = Scenario(SERVICE, model, targets.RATIO_CONNECTIONS, protocol=v2.V2_JSON)
            json_load = shared_core.PairLoad(
                scenario.path, bodies.prepare(scenario, load.single_row_bodies), v2.LUA_SCRIPT
            )
            pairs.append((targets.V2_JSON_PAIR, model, typed(model), json_load))
    return pairs


def _paired_workloads(
    name: str,
    model: str,
    services: tuple[servers.RunningServer | str, servers.RunningServer | str],
    a_load: shared_core.PairLoad,
    b_load: shared_core.PairLoad,
    args: argparse.Namespace,
    load: measure.Load,
) -> shared_core.PairedComparison:
    """Two workloads on the two like service instances, half of the runs with A's on each."""
    print(f"[paired] {name}, {model} ...", flush=True)
    couples = [services, services[::-1]]
    comparison = _compare_halves(
        name, (SERVICE, SERVICE), model, couples, a_load, b_load, args, load
    )
    _say_result(
        "paired",
        name,
        model,
        comparison.error,
        comparison.throughput_ratio,
        "B's throughput {} of A's",
    )
    return comparison


def _compare_halves(
    name: str,
    names: tuple[str, str],
    model: str,
    couples: list[tuple[servers.RunningServer | str, servers.RunningServer | str]],
    a_load: shared_core.PairLoad,
    b_load: shared_core.PairLoad | None,
    args: argparse.Namespace,
    load: measure.Load,
) -> shared_core.PairedComparison:
    """One comparison, half of its runs on each (A, B) couple of servers (a string where a
    server did not start: why), combined; ``names`` are A's and B's settings."""
    halves = []
    for a, b in couples:
        if isinstance(a, str) or isinstance(b, str):
            why = a if isinstance(a, str) else str(b)
            halves.append(
                shared_core.PairedComparison(name, *names, model, PAIR_CONNECTIONS, 0, error=why)
            )
            continue
        halves.append(
            shared_core.compare(
                name,
                a,
                b,
                model=model,
                path=a_load.path,
                bodies_file=a_load.bodies_file,
                script=a_load.script,
                b_load=b_load,
                wrk_path=load.wrk,
                runs=args.pair_runs // 2,
                duration_s=2.0 if args.quick else PAIR_DURATION_S,
                connections=PAIR_CONNECTIONS,
                timeout_s=load.timeout_s,
            )
        )
    return shared_core.combine(halves)


ALTERNATE_DURATION_S = 1.0


def _alternations(
    args: argparse.Namespace,
    running: dict[str, servers.RunningServer | str],
    bodies: measure.Bodies,
    load: measure.Load,
) -> list[alternating.Alternation]:
    """Issue 7's single-row v2 JSON vs typed at c=1, per model, in alternating short runs on
    the service (``bench.alternating``): the rounds at c=1 spread too much to decide 10 %."""
    server = running.get(SERVICE)
    c = targets.LOW_LOAD_CONNECTIONS
    if args.pair_runs <= 0 or c not in args.v2_connections or server is None:
        return []
    out = []
    for model in args.models:
        if isinstance(server, str):
            out.append(alternating.Alternation(targets.V2_JSON_PAIR, model, c, 0, error=server))
            continue
        typed = Scenario(SERVICE, model, c)
        json = Scenario(SERVICE, model, c, protocol=v2.V2_JSON)
        count = load.single_row_bodies
        print(f"[alternating] {targets.V2_JSON_PAIR}, {model}, c={c} ...", flush=True)
        result = alternating.alternate(
            targets.V2_JSON_PAIR,
            server,
            model=model,
            a=shared_core.PairLoad(typed.path, bodies.prepare(typed, count)),
            b=shared_core.PairLoad(json.path, bodies.prepare(json, count), v2.LUA_SCRIPT),
            wrk_path=load.wrk,
            runs=args.pair_runs,
            duration_s=ALTERNATE_DURATION_S,
            connections=c,
            timeout_s=load.timeout_s,
        )
        _say_result(
            "alternating",
            targets.V2_JSON_PAIR,
            model,
            result.error,
            result.ratio,
            "B's req/s {} of A's",
        )
        out.append(result)
    return out


def _runtimes(
    args: argparse.Namespace, store: ModelStore
) -> tuple[list[runtimes.RuntimeTiming], str | None]:
    """In-process batch cost per model, runtime and batch size; or why it could not run."""
    if args.no_runtimes:
        return [], None
    models = args.runtime_models or store.names()
    missing = sorted(set(models) - set(store.names()))
    if missing:
        print(f"in-process runtimes: not in the store: {missing}", file=sys.stderr)
        return [], f"--runtime-models not in the store: {missing}"
    print(
        f"in-process runtimes: {', '.join(models)} x batch sizes "
        f"{', '.join(map(str, runtimes.BATCH_SIZES))}, {args.runtime_budget:g} s per cell ...",
        flush=True,
    )
    start = time.monotonic()
    try:
        timings = runtimes.measure(store, models, budget_s=args.runtime_budget)
    except Exception as exc:  # report it and go on with the load benchmark
        print(f"in-process runtime comparison failed: {exc!r}", file=sys.stderr)
        return [], f"{type(exc).__name__}: {exc}"
    print(f"in-process runtimes: {time.monotonic() - start:.0f} s", flush=True)
    return timings, None


def _served_runtimes(
    running: dict[str, servers.RunningServer | str], models: list[str]
) -> dict[str, dict[str, str | None]]:
    """The runtime each service reports (``GET /models/{name}``) for each model."""
    return {
        name: {model: measure.served_runtime(server, model) for model in models}
        for name, server in running.items()
        if name in SERVICES and not isinstance(server, str)
    }


def _notes(
    args: argparse.Namespace,
    env: dict[str, Any],
    outcomes: list[Outcome],
    running: dict[str, servers.RunningServer | str],
    elapsed_s: float,
    limit: int,
    served: dict[str, dict[str, str | None]],
    runtimes_error: str | None,
) -> list[str]:
    load_at_start = env["load_average_at_start"][0]
    notes = [
        f"wrk: {args.threads} thread(s); per scenario {args.rounds} round(s) of "
        f"{args.duration:g} s (median round shown; spread = (max - min) / median req/s) after "
        f"one {args.warmup:g} s warm-up; timeout {args.timeout:g} s; wrk and the servers share "
        f"{os.cpu_count()} CPUs.",
        "errors (all rounds) = socket connect/read/write/timeout + HTTP >= 400 (wrk's status "
        "count); CPU % is of one core; other CPU = everything else on the box (noise).",
        f"total time {elapsed_s:.0f} s; RLIMIT_NOFILE {limit}; 1-min load average "
        f"{load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end.",
    ]
    if load_at_start > 0.5:
        notes.append(
            f"WARNING: the box was busy when the run started (load average {load_at_start:.2f}): "
            "other processes compete for the CPUs, so every figure is noisier than usual."
        )
    mismatched = [o.scenario.key for o in outcomes if o.predictions_match is False]
    if mismatched:
        notes.append(f"WARNING: predictions differ from in-process predict: {mismatched}")
    for name, by_model in served.items():
        for model, runtime in by_model.items():
            if runtime is None:
                notes.append(f"WARNING: {name} did not report the runtime serving {model}.")
            elif targets.wrong_runtime(served, name, model):
                notes.append(
                    f"WARNING: {name} serves {model} with {runtime}, not "
                    f"{targets.RUNTIME_OF[name]}: its runtime targets are N/A."
                )
    if runtimes_error is not None:
        notes.append(f"WARNING: the in-process runtime comparison failed: {runtimes_error}")
    notes += ray_serve.overhead_notes(outcomes)
    if RAY in running:
        notes.append(
            f"{RAY}: a local Ray instance ({args.ray_config.name}); it ran during every "
            "scenario, so its idle CPU counts as other CPU in the others."
        )
    elif not ray_serve.available():
        notes.append(f"no Ray scenario: {ray_serve.INSTALL_HINT}.")
    for name, server in running.items():
        if not isinstance(server, str) and server.leftovers:
            notes.append(f"WARNING: {name} left processes {server.leftovers} after shutdown.")
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_average = os.getloadavg()
    wrk_path = wrk.find_wrk()
    if wrk_path is None:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    store_path = _store_path(args.store)
    if not args.no_train:
        ensure_default_models(store_path)
    store = ModelStore(store_path)
    try:
        versions = {m: served_version(store, m) for m in args.models}
    except StoreError as exc:
        print(f"error: {exc}\nTrain it first, e.g. `make train MODEL=<name>`.", file=sys.stderr)
        return 2
    limit = servers.raise_open_files_limit(max(8192, 4 * max(args.connections, default=0)))
    scenarios = plan(
        args.models,
        args.servers,
        connections=args.connections,
        baseline_connections=args.baseline_connections,
        rows_per_request=args.rows,
        rows_connections=args.rows_connections,
        v2_connections=args.v2_connections,
    )
    load = measure.Load(
        wrk=wrk_path,
        duration_s=args.duration,
        warmup_s=args.warmup,
        threads=args.threads,
        timeout_s=args.timeout,
        single_row_bodies=200 if args.quick else 500,
        rows_bodies=2 if args.quick else 4,
    )
    started = datetime.now(UTC)
    env = environment(wrk_path, store_path, versions, load_average)
    local: list[InProcess] = []
    expected: dict[str, list[Any]] = {}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="servewell-bench-") as tmp, ExitStack() as stack:
        bodies = measure.Bodies(store, versions, Path(tmp))
        # In-process first, while no server exists to compete with it.
        for s in scenarios:
            if s.is_rows and s.model not in expected:
                bodies.prepare(s, load.rows_bodies)
                result, expected[s.model] = measure.in_process(
                    store,
                    s.model,
                    versions[s.model],
                    bodies.first_rows(s),
                    budget_s=1.0 if args.quick else 3.0,
                )
                local.append(result)
        timings, runtimes_error = _runtimes(args, store)
        names = [n for n in SERVERS if any(s.server == n for s in scenarios)]
        pairing = args.pair_runs > 0 and SERVICE in names and SERVICE_QUIET in names
        # The pairs first, on their own fresh servers, before anything else loads the box.
        paired = _paired(args, store_path, bodies, load, Path(tmp)) if pairing else []
        running = _start_servers(names, args, store_path, stack, Path(tmp))
        served = _served_runtimes(running, args.models)
        outcomes = _measure_rounds(scenarios, running, bodies, load, args.rounds, expected)
        alternations = _alternations(args, running, bodies, load)
        stack.close()  # stop the servers now, to see what they leave behind
    run = report.Run(
        timestamp=started.strftime("%Y%m%dT%H%M%SZ"),
        environment=env,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        outcomes=outcomes,
        in_process=local,
        targets=targets.evaluate(outcomes, local, args.models, served, paired, alternations),
        notes=_notes(
            args,
            env,
            outcomes,
            running,
            time.monotonic() - t0,
            limit,
            served,
            runtimes_error,
        ),
        runtimes=timings,
        served_runtimes=served,
        paired=paired,
        alternating=alternations,
    )
    print()
    print(report.render(run))
    for path in report.write(run, args.results_dir, chart=not args.no_chart):
        print(f"wrote {path}")
    failed = any(o.result is None for o in outcomes)
    missed = any(t.status == "MISS" for t in run.targets)
    return 1 if failed or (args.fail_on_miss and missed) else 0


if __name__ == "__main__":
    try:
        with servers.sigterm_as_interrupt():
            sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written", file=sys.stderr)
        sys.exit(130)
