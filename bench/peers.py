"""servewell against Seldon MLServer, with wrk on loopback, in one run.

    make bench-peers                                  # builds .venv-peers once, ~3 min run
    .venv/bin/python bench/peers.py --quick           # ~1.5 min, noisier
    .venv/bin/python bench/peers.py --help

Both servers serve the same ``model.joblib`` files of the store (MLServer through its
scikit-learn runtime, adaptive batching on), are sent the same rows (servewell's typed
``POST /models/<name>/predict``, MLServer's V2 ``POST /v2/models/<name>/infer``), and are
first checked to give the same predictions for those rows. Then wrk drives single-row
requests of each model at each connection count, the two servers next to each other, round
after round. Prints a side-by-side table with the ratio servewell/MLServer, and writes
``bench/results/peers-<UTC timestamp>.json`` and ``.png`` plus ``peers-latest.*``.

Exit status: 0 when every scenario ran, 1 when one could not be measured or the predictions
differ (or, with ``--fail-on-miss``, when a target is missed), 2 when wrk, a model or the
peer's virtualenv is missing.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a script (``python bench/peers.py``): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mlserver_peer, servers, workload, wrk
from bench.measure import SEED, post_json
from bench.scenarios import Measurement, Outcome, Scenario
from bench.wrk import Errors, Latency, WrkResult
from serving.store import ModelStore, StoreError

ROOT = servers.ROOT
SERVEWELL = "servewell"
MLSERVER = "mlserver"
PEERS = (SERVEWELL, MLSERVER)
DEFAULT_MODELS = ("iris", "breast_cancer")
DEFAULT_VENV = ROOT / ".venv-peers"
RESULTS_DIR = ROOT / "bench" / "results"
TARGET_RATIO = 3.0
TARGET_RATIO_CONNECTIONS = 100
ZERO_ERRORS_CONNECTIONS = 1000
SCHEMA_VERSION = 1


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in _csv(text)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS))
    p.add_argument("--connections", type=_ints, default=[100, 1000])
    p.add_argument("--rounds", type=int, default=None, help="measured runs (default 3; quick 1)")
    p.add_argument("--duration", type=float, default=None, help="s per run (default 5; quick 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="s, one discarded run first")
    p.add_argument("--timeout", type=float, default=2.0, help="wrk request timeout, s")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--bodies", type=int, default=500, help="distinct single-row bodies")
    p.add_argument("--quick", action="store_true", help="1 round of 3 s")
    p.add_argument("--store", type=Path, default=None, help="default $SERVEWELL_STORE or models/")
    p.add_argument("--no-train", action="store_true", help="do not train an empty store")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="MLServer's virtualenv")
    p.add_argument("--mlserver-workers", type=int, default=mlserver_peer.Config.parallel_workers)
    p.add_argument("--max-batch-size", type=int, default=mlserver_peer.Config.max_batch_size)
    p.add_argument("--max-batch-time", type=float, default=mlserver_peer.Config.max_batch_time)
    p.add_argument("--ready-timeout", type=float, default=120.0, help="s per server start")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: print the table of a results file and redraw its chart",
    )
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3.0 if args.quick else 5.0
    return args


def plan(models: Sequence[str], connections: Sequence[int]) -> list[Scenario]:
    """Per connection count (lowest first: overload comes last in a round) and model,
    servewell then MLServer (adjacent, so they see the same background load)."""
    return [Scenario(peer, m, c) for c in sorted(connections) for m in models for peer in PEERS]


def settle(
    server: servers.RunningServer,
    *,
    idle_percent: float = 10.0,
    window_s: float = 0.5,
    limit_s: float = 60.0,
) -> float:
    """Wait until ``server`` is idle (its processes use < ``idle_percent`` of one core over
    ``window_s``), at most ``limit_s``; return the seconds waited.

    A server that fell behind at c=1000 goes on answering requests whose clients are gone;
    measuring the next scenario before it is done would charge that backlog to it.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = server.cpu_seconds()
        time.sleep(window_s)
        if 100.0 * (server.cpu_seconds() - before) / window_s < idle_percent:
            break
    return time.monotonic() - start


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parity:
    """Both servers' answers for the same rows, one request each."""

    model: str
    rows: int
    matches: int
    """Rows where MLServer's ``predict`` equals servewell's prediction."""
    matches_in_process: int
    """Rows where servewell's prediction equals ``predict`` of the joblib file in this process."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.matches == self.matches_in_process == self.rows


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    status: str
    """PASS, MISS or N/A (its scenario did not run)."""


def _find(outcomes: Sequence[Outcome], peer: str, model: str, c: int) -> Outcome | None:
    for o in outcomes:
        s = o.scenario
        if (s.server, s.model, s.connections) == (peer, model, c):
            return o
    return None


def ratio(outcomes: Sequence[Outcome], model: str, c: int) -> float | None:
    """servewell req/s over MLServer req/s for one model and connection count."""
    ours = _find(outcomes, SERVEWELL, model, c)
    theirs = _find(outcomes, MLSERVER, model, c)
    if ours is None or theirs is None:
        return None
    a, b = ours.requests_per_s, theirs.requests_per_s
    if a is None or b is None or b <= 0:
        return None
    return a / b


def evaluate(outcomes: Sequence[Outcome], models: Sequence[str]) -> list[Target]:
    out = []
    for model in models:
        r = ratio(outcomes, model, TARGET_RATIO_CONNECTIONS)
        out.append(
            Target(
                f"{model} single-row req/s servewell / MLServer, c={TARGET_RATIO_CONNECTIONS}",
                f">= {TARGET_RATIO:g}x",
                "-" if r is None else f"{r:.2f}x",
                "N/A" if r is None else ("PASS" if r >= TARGET_RATIO else "MISS"),
            )
        )
    for model in models:
        o = _find(outcomes, SERVEWELL, model, ZERO_ERRORS_CONNECTIONS)
        errors = None if o is None else o.errors
        out.append(
            Target(
                f"{model} servewell errors at c={ZERO_ERRORS_CONNECTIONS} (all rounds)",
                "= 0",
                "-" if errors is None else str(errors.total),
                "N/A" if errors is None else ("PASS" if errors.total == 0 else "MISS"),
            )
        )
    return out


@dataclass(frozen=True)
class Run:
    timestamp: str
    environment: dict[str, Any]
    settings: dict[str, Any]
    outcomes: list[Outcome]
    parity: list[Parity]
    targets: list[Target]
    notes: list[str]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(run: Run) -> list[list[str]]:
    """model, c, then req/s, p50, p99, errors of servewell and MLServer, and the ratio."""
    rows = []
    keys = sorted(
        {(o.scenario.model, o.scenario.connections) for o in run.outcomes},
        key=lambda k: (run.settings["models"].index(k[0]), k[1]),
    )
    for model, c in keys:
        cells = [model, str(c)]
        for peer in PEERS:
            o = _find(run.outcomes, peer, model, c)
            r = None if o is None else o.result
            e = None if o is None else o.errors
            if r is None or e is None:
                cells += ["FAILED", "-", "-", "-"]
                continue
            # wrk leaves answers slower than its timeout out of the percentiles (and counts
            # them as timeouts): with none faster, there are no percentiles to show.
            timed = r.latency.max > 0
            cells += [
                f"{r.requests_per_s:,.0f}",
                f"{r.latency.p50:.1f}" if timed else "-",
                f"{r.latency.p99:.1f}" if timed else "-",
                str(e.total),
            ]
        times = ratio(run.outcomes, model, c)
        cells.append("-" if times is None else f"{times:.2f}x")
        rows.append(cells)
    return rows


TABLE_HEADER = [
    "model",
    "conns",
    "servewell req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "MLServer req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "servewell/MLServer",
]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def markdown_table(run: Run) -> str:
    """The side-by-side table as Markdown (for the README)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(run)]
    return "\n".join(lines)


def render(run: Run) -> str:
    out = ["servewell vs Seldon MLServer: single-row requests, wrk on loopback, median round", ""]
    out += _table(TABLE_HEADER, table_rows(run))
    out.append(
        "(p50/p99 '-': every answer in that round was slower than wrk's timeout, which counts "
        "it as a timeout error and leaves it out of the percentiles)"
    )
    out += ["", "Predictions for the same rows:"]
    for p in run.parity:
        if p.error is not None:
            out.append(f"  {p.model}: NOT CHECKED: {p.error}")
        else:
            out.append(
                f"  {p.model}: MLServer = servewell on {p.matches}/{p.rows} rows; servewell = "
                f"in-process predict on {p.matches_in_process}/{p.rows}"
                + ("" if p.ok else "  <-- MISMATCH")
            )
    out += ["", "Targets:"]
    out += _table(
        ["target", "goal", "measured", "status"],
        [[t.name, t.goal, t.measured, t.status] for t in run.targets],
    )
    failed = [o for o in run.outcomes if o.error is not None]
    if failed:
        out += ["", "Failed scenarios:"]
        out += [f"  {o.scenario.key}: {o.error}" for o in failed]
    out += ["", "Notes:"]
    out += [f"  - {n}" for n in run.notes]
    return "\n".join(out)


def _measurement_json(m: Measurement) -> dict[str, Any]:
    r = m.result
    return {
        "duration_s": r.duration_s,
        "requests": r.requests,
        "requests_per_s": r.requests_per_s,
        "latency_ms": asdict(r.latency),
        "errors": {**asdict(r.errors), "total": r.errors.total},
        "server_cpu_percent": m.cpu_percent(m.server_cpu_s),
        "wrk_cpu_percent": m.cpu_percent(m.wrk_cpu_s),
        "other_cpu_percent": m.cpu_percent(m.other_cpu_s),
    }


def to_json(run: Run) -> dict[str, Any]:
    scenarios = []
    for o in run.outcomes:
        errors = o.errors
        median = o.median
        scenarios.append(
            {
                "key": o.scenario.key,
                "server": o.scenario.server,
                "model": o.scenario.model,
                "connections": o.scenario.connections,
                "error": o.error,
                "requests_per_s": o.requests_per_s,
                "latency_ms": None if o.result is None else asdict(o.result.latency),
                "spread": o.spread,
                "errors_all_rounds": None
                if errors is None
                else {**asdict(errors), "total": errors.total},
                "median_round": None if median is None else o.runs.index(median),
                "rounds": [_measurement_json(m) for m in o.runs],
            }
        )
    ratios = {
        f"{m}/c{c}": ratio(run.outcomes, m, c)
        for m in run.settings["models"]
        for c in run.settings["connections"]
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "timestamp": run.timestamp,
        "environment": run.environment,
        "settings": run.settings,
        "scenarios": scenarios,
        "ratios_servewell_over_mlserver": ratios,
        "parity": [{**asdict(p), "ok": p.ok} for p in run.parity],
        "targets": [asdict(t) for t in run.targets],
        "notes": run.notes,
    }


def from_json(doc: dict[str, Any]) -> Run:
    """The run a results file holds (``to_json``'s inverse, enough to re-render and re-plot)."""
    outcomes = []
    for sc in doc["scenarios"]:
        runs = tuple(
            Measurement(
                result=WrkResult(
                    duration_s=m["duration_s"],
                    requests=m["requests"],
                    bytes=0,
                    errors=Errors(**{k: v for k, v in m["errors"].items() if k != "total"}),
                    latency=Latency(**m["latency_ms"]),
                ),
                server_cpu_s=(m["server_cpu_percent"] or 0.0) * m["duration_s"] / 100,
                wrk_cpu_s=(m["wrk_cpu_percent"] or 0.0) * m["duration_s"] / 100,
                other_cpu_s=(m["other_cpu_percent"] or 0.0) * m["duration_s"] / 100,
            )
            for m in sc["rounds"]
        )
        scenario = Scenario(sc["server"], sc["model"], sc["connections"])
        outcomes.append(Outcome(scenario, runs=runs, error=sc["error"]))
    return Run(
        timestamp=doc["timestamp"],
        environment=doc["environment"],
        settings=doc["settings"],
        outcomes=outcomes,
        parity=[
            Parity(p["model"], p["rows"], p["matches"], p["matches_in_process"], p["error"])
            for p in doc["parity"]
        ],
        targets=[Target(**t) for t in doc["targets"]],
        notes=doc["notes"],
    )


def draw_chart(run: Run, path: Path) -> None:
    """Grouped bars per (model, connections): req/s, and p50/p99 latency, both peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(row[0], int(row[1])) for row in table_rows(run)]
    colors = {SERVEWELL: "tab:blue", MLSERVER: "tab:orange"}
    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(13, 4.8))
    xs = list(range(len(keys)))
    width = 0.38
    for j, peer in enumerate(PEERS):
        rps, p50, p99 = [], [], []
        for model, c in keys:
            o = _find(run.outcomes, peer, model, c)
            r = None if o is None else o.result
            rps.append(0.0 if r is None else r.requests_per_s)
            p50.append(0.0 if r is None else r.latency.p50)
            p99.append(0.0 if r is None else r.latency.p99)
        offset = (j - 0.5) * width
        label = "servewell" if peer == SERVEWELL else "Seldon MLServer"
        bars = ax_rps.bar([x + offset for x in xs], rps, width, color=colors[peer], label=label)
        ax_rps.bar_label(bars, labels=[f"{v:,.0f}" for v in rps], fontsize=8)
        ax_lat.bar([x + offset for x in xs], p99, width, color=colors[peer], alpha=0.45)
        ax_lat.bar([x + offset for x in xs], p50, width, color=colors[peer], label=f"{label}")
        for x, (model, c) in zip(xs, keys, strict=True):
            o = _find(run.outcomes, peer, model, c)
            if o is not None and o.result is not None and o.result.latency.max == 0:
                ax_lat.annotate(
                    "every answer\nslower than\nthe timeout",
                    (x + offset, 0.5),
                    xycoords=("data", "axes fraction"),
                    ha="center",
                    fontsize=7,
                    color=colors[peer],
                )
    labels = []
    for m, c in keys:
        times = ratio(run.outcomes, m, c)
        labels.append(f"{m}\nc={c}\n" + ("-" if times is None else f"servewell {times:.1f}x"))
    for ax in (ax_rps, ax_lat):
        ax.set_xticks(xs, labels)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8)
    ax_rps.set_ylim(top=1.12 * max(ax_rps.get_ylim()[1], 1.0))  # room for the bar labels
    ax_rps.set_ylabel("requests/s (median round)")
    ax_lat.set_ylabel("latency ms: p50 (solid), p99 (light)")
    ax_lat.set_yscale("log")
    fig.suptitle(
        f"servewell vs Seldon MLServer {run.timestamp}: single-row requests, wrk on loopback\n"
        "same joblib artifacts, same rows; servewell/MLServer req/s ratio under each group"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: Run, results_dir: Path, *, chart: bool) -> list[Path]:
    """``peers-<timestamp>.json`` (+ ``.png``) and copies named ``peers-latest``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"peers-{run.timestamp}.json"
    json_path.write_text(json.dumps(to_json(run), indent=2) + "\n", encoding="utf-8")
    written = [json_path]
    if chart and any(o.result is not None for o in run.outcomes):
        png_path = results_dir / f"peers-{run.timestamp}.png"
        draw_chart(run, png_path)
        written.append(png_path)
    for path in list(written):
        latest = results_dir / f"peers-latest{path.suffix}"
        shutil.copyfile(path, latest)
        written.append(latest)
    return written


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bodies:
    """Per model, the same sampled rows as servewell and as MLServer request bodies."""

    rows: dict[str, list[workload.Row]]
    files: dict[tuple[str, str], Path]
    """(peer, model) -> bodies file, one single-row request per line."""


def prepare_bodies(
    store: ModelStore, versions: dict[str, int], count: int, workdir: Path
) -> Bodies:
    rows: dict[str, list[workload.Row]] = {}
    files: dict[tuple[str, str], Path] = {}
    for model, version in versions.items():
        manifest = store.manifest(model, version)
        rows[model] = [workload.sample_rows(manifest, 1, SEED + i)[0] for i in range(count)]
        ours = [workload.instances_body(manifest, [row]) for row in rows[model]]
        theirs = [mlserver_peer.infer_body(manifest, [row]) for row in rows[model]]
        files[(SERVEWELL, model)] = workload.write_bodies(
            workdir / f"{model}-servewell.jsonl", ours
        )
        files[(MLSERVER, model)] = workload.write_bodies(
            workdir / f"{model}-mlserver.jsonl", theirs
        )
    return Bodies(rows=rows, files=files)


def path_of(peer: str, model: str) -> str:
    return mlserver_peer.infer_path(model) if peer == MLSERVER else f"/models/{model}/predict"


def check_parity(
    store: ModelStore,
    versions: dict[str, int],
    bodies: Bodies,
    running: dict[str, servers.RunningServer],
) -> list[Parity]:
    """All benchmark rows in one request to each server, compared with each other and with
    ``predict`` of the joblib file in this process."""
    out = []
    for model, version in versions.items():
        rows = bodies.rows[model]
        manifest, estimator = store.load_model(model, version)
        local = estimator.predict(workload.model_input(manifest, rows)).tolist()
        try:
            status, text = post_json(
                running[SERVEWELL].url + path_of(SERVEWELL, model),
                workload.instances_body(manifest, rows),
            )
            if status != 200:
                raise ValueError(f"servewell answered HTTP {status}: {text[:300]}")
            ours = json.loads(text)["predictions"]
            status, text = post_json(
                running[MLSERVER].url + path_of(MLSERVER, model),
                mlserver_peer.infer_body(manifest, rows),
            )
            if status != 200:
                raise ValueError(f"MLServer answered HTTP {status}: {text[:300]}")
            theirs = mlserver_peer.predictions(text)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(Parity(model, len(rows), 0, 0, error=str(exc)))
            continue
        out.append(
            Parity(
                model,
                len(rows),
                matches=mlserver_peer.count_matches(ours, theirs),
                matches_in_process=mlserver_peer.count_matches(ours, local),
            )
        )
    return out


def measure_once(
    server: servers.RunningServer,
    scenario: Scenario,
    bodies_file: Path,
    args: argparse.Namespace,
    wrk_path: str,
    *,
    warm_up: bool,
) -> Measurement:
    def drive(duration_s: float) -> wrk.WrkRun:
        return wrk.run(
            wrk_path,
            server.url,
            path_of(scenario.server, scenario.model),
            bodies_file,
            connections=scenario.connections,
            threads=args.threads,
            duration_s=duration_s,
            timeout_s=args.timeout,
        )

    if warm_up and args.warmup > 0:
        drive(args.warmup)
    cpu_before, host_before = server.cpu_seconds(), servers.host_busy_cpu_seconds()
    measured = drive(args.duration)
    server_cpu_s = server.cpu_seconds() - cpu_before
    host_cpu_s = servers.host_busy_cpu_seconds() - host_before
    if server.process.poll() is not None:
        raise wrk.WrkError(f"{server.spec.name} exited with {server.process.returncode}")
    return Measurement(
        result=measured.result,
        server_cpu_s=server_cpu_s,
        wrk_cpu_s=measured.cpu_s,
        other_cpu_s=max(0.0, host_cpu_s - server_cpu_s - measured.cpu_s),
    )


def measure_rounds(
    scenarios: list[Scenario],
    running: dict[str, servers.RunningServer],
    bodies: Bodies,
    args: argparse.Namespace,
    wrk_path: str,
) -> list[Outcome]:
    """Every scenario once per round, rounds one after another (see bench/README.md)."""
    outcomes = {s.key: Outcome(s) for s in scenarios}
    for r in range(args.rounds):
        for i, s in enumerate(scenarios, 1):
            outcome = outcomes[s.key]
            if outcome.error is not None:
                continue
            server = running[s.server]
            label = f"[round {r + 1}/{args.rounds}, {i}/{len(scenarios)}] {s.key}"
            waited = max(settle(other) for other in running.values())
            if waited > 2.0:
                print(f"{label}: waited {waited:.0f} s for the servers to go idle", flush=True)
            try:
                m = measure_once(
                    server, s, bodies.files[(s.server, s.model)], args, wrk_path, warm_up=r == 0
                )
            except wrk.WrkError as exc:
                outcomes[s.key] = replace(outcome, error=str(exc))
                print(f"{label}: FAILED: {exc}", flush=True)
                if server.process.poll() is not None:
                    print(f"{s.server} died; log tail:\n{server.log_tail()}", file=sys.stderr)
                continue
            outcomes[s.key] = replace(outcome, runs=(*outcome.runs, m))
            res = m.result
            print(
                f"{label}: {res.requests_per_s:,.0f} req/s, p50 {res.latency.p50:.1f} ms, "
                f"p99 {res.latency.p99:.1f} ms, errors {res.errors.total}",
                flush=True,
            )
    return [outcomes[s.key] for s in scenarios]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the servers are stopped on that exit path too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def environment(wrk_path: str, store: Path, versions: dict[str, int], venv: Path) -> dict[str, Any]:
    from bench.run import environment as bench_environment

    env = bench_environment(wrk_path, store, versions, os.getloadavg())
    env["mlserver_venv"] = str(venv)
    env["mlserver_packages"] = mlserver_peer.package_versions(venv)
    return env


def notes(
    args: argparse.Namespace,
    env: dict[str, Any],
    running: dict[str, servers.RunningServer],
    elapsed_s: float,
) -> list[str]:
    load_at_start = env["load_average_at_start"][0]
    out = [
        f"wrk: {args.threads} thread(s); per scenario {args.rounds} round(s) of "
        f"{args.duration:g} s (median round by req/s) after one {args.warmup:g} s warm-up; "
        f"timeout {args.timeout:g} s; {args.bodies} distinct single-row bodies per model; "
        f"wrk and both servers share {os.cpu_count()} CPUs.",
        "servewell: `python -m serving` with its default settings (SERVEWELL_RUNTIME=auto); "
        "MLServer: mlserver_sklearn.SKLearnModel on the same model.joblib, "
        f"parallel_workers={args.mlserver_workers}, max_batch_size={args.max_batch_size}, "
        f"max_batch_time={args.max_batch_time:g} s, debug off, no metrics server.",
        "Both answer predict() labels/values only (no probabilities).",
        "errors (all rounds) = socket connect/read/write/timeout + HTTP >= 400.",
        f"total time {elapsed_s:.0f} s; 1-min load average {load_at_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end.",
    ]
    if load_at_start > 0.5:
        out.append(
            f"WARNING: the box was busy when the run started (load average {load_at_start:.2f}): "
            "every figure is noisier than usual; compare ratios within the run."
        )
    ours = env["packages"].get("scikit-learn")
    theirs = env["mlserver_packages"].get("scikit-learn")
    if ours != theirs:
        out.append(f"WARNING: scikit-learn {ours} here, {theirs} in MLServer's virtualenv.")
    for name, server in running.items():
        if server.leftovers:
            out.append(f"WARNING: {name} left processes {server.leftovers} after shutdown.")
    return out


def _preconditions(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None."""
    if not (args.venv / "bin" / "mlserver").is_file():
        return (
            f"MLServer is not installed in {args.venv}. `make bench-peers` builds it "
            "(pip install -r bench/peers-requirements.txt plus servewell's scikit-learn)."
        )
    ours = metadata.version("scikit-learn")
    theirs = mlserver_peer.package_versions(args.venv).get("scikit-learn")
    if ours != theirs:
        return (
            f"scikit-learn {theirs} in {args.venv} but {ours} here: the joblib files need the "
            f"version that wrote them. Rebuild it: rm -rf {args.venv} && make bench-peers"
        )
    return None


def replot(path: Path) -> int:
    run = from_json(json.loads(path.read_text(encoding="utf-8")))
    print(render(run))
    print()
    print(markdown_table(run))
    png = path.with_suffix(".png")
    draw_chart(run, png)
    print(f"wrote {png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        return replot(args.replot)
    wrk_path = wrk.find_wrk()
    if wrk_path is None:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    args.venv = args.venv.resolve()
    problem = _preconditions(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from bench.run import _store_path, ensure_default_models

    store_path = _store_path(args.store)
    if not args.no_train:
        ensure_default_models(store_path)
    store = ModelStore(store_path)
    try:
        versions = {m: workload.served_version(store, m) for m in args.models}
    except StoreError as exc:
        print(f"error: {exc}\nTrain it first, e.g. `make train MODEL=<name>`.", file=sys.stderr)
        return 2
    servers.raise_open_files_limit(max(8192, 4 * max(args.connections, default=0)))
    config = mlserver_peer.Config(
        parallel_workers=args.mlserver_workers,
        max_batch_size=args.max_batch_size,
        max_batch_time=args.max_batch_time,
    )
    scenarios = plan(args.models, args.connections)
    started = datetime.now(UTC)
    env = environment(wrk_path, store_path, versions, args.venv)
    t0 = time.monotonic()
    running: dict[str, servers.RunningServer] = {}
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="servewell-peers-") as tmp,
        ExitStack() as stack,
    ):
        workdir = Path(tmp)
        bodies = prepare_bodies(store, versions, args.bodies, workdir)
        repository = mlserver_peer.write_repository(workdir / "mlserver", store, versions, config)
        specs = [
            servers.service_spec(store_path, name=SERVEWELL, runtime="auto"),
            mlserver_peer.spec(args.venv, repository),
        ]
        for spec in specs:
            print(f"starting {spec.name} ...", flush=True)
            try:
                server = servers.start(spec, workdir, args.ready_timeout)
            except servers.ServerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            stack.callback(server.stop)
            running[spec.name] = server
        parity = check_parity(store, versions, bodies, running)
        for p in parity:
            print(
                f"parity {p.model}: "
                + (
                    p.error or f"{p.matches}/{p.rows} rows agree, {p.matches_in_process} in-process"
                ),
                flush=True,
            )
        outcomes = measure_rounds(scenarios, running, bodies, args, wrk_path)
        stack.close()  # stop both servers now, to see what they leave behind
    run = Run(
        timestamp=started.strftime("%Y%m%dT%H%M%SZ"),
        environment=env,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        outcomes=outcomes,
        parity=parity,
        targets=evaluate(outcomes, args.models),
        notes=notes(args, env, running, time.monotonic() - t0),
    )
    print()
    print(render(run))
    print()
    print(markdown_table(run))
    for path in write(run, args.results_dir, chart=not args.no_chart):
        print(f"wrote {path}")
    failed = any(o.result is None for o in outcomes) or not all(p.ok for p in parity)
    missed = any(t.status == "MISS" for t in run.targets)
    return 1 if failed or (args.fail_on_miss and missed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written", file=sys.stderr)
        sys.exit(130)
