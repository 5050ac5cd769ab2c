"""servewell against Seldon MLServer, with wrk on loopback, in one run.

    make bench-peers                                  # builds .venv-peers once, ~5 min run
    .venv/bin/python bench/peers.py --quick           # ~2 min, noisier
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
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (``python bench/peers.py``): make the ``bench`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import mlserver_peer, servers, workload, wrk
from bench.measure import SEED, post_json
from bench.peers_report import (
    MLSERVER,
    PEERS,
    SERVEWELL,
    Parity,
    Run,
    draw_chart,
    evaluate,
    from_json,
    markdown_table,
    render,
    write,
)
from bench.scenarios import Measurement, Outcome, Scenario
from serving.store import ModelStore, StoreError

ROOT = servers.ROOT
DEFAULT_MODELS = ("iris", "breast_cancer")
DEFAULT_VENV = ROOT / ".venv-peers"
RESULTS_DIR = ROOT / "bench" / "results"


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
        servers.sigterm_as_interrupt(),
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
