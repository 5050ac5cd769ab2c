"""Load benchmark of servewell with wrk on loopback: one driver for every suite.

    .venv/bin/python bench/run.py                 # make bench: ~14 min
    .venv/bin/python bench/run.py --quick         # ~4 min, noisier
    .venv/bin/python bench/run.py --baseline-ref main   # also: this commit vs main, paired
    .venv/bin/python bench/run.py --suite peers   # make bench-peers (MLServer in .venv-peers)
    .venv/bin/python bench/run.py --suite ray     # make bench-ray

Paired comparisons run first, on their own fresh servers; then every scenario once per round,
round after round, so a burst of background load spoils one round of many scenarios rather than
every round of one. Prints a table and writes bench/results/<UTC time>.json and .png (and
latest.*). Exit status 1 when a scenario failed (or, with --fail-on-miss, a target missed), 2
when wrk, a model or a peer is missing. See bench/README.md.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bodies, paired, report, servers, wrk
from bench.report import Measured, Outcome
from bench.scenarios import (
    SERVERS,
    Scenario,
    Server,
    Suite,
    baseline_server,
    main_suite,
    peers_suite,
    ray_suite,
)
from serving.store import ModelStore

ROOT = servers.ROOT
Files = dict[tuple[str, str, int], Path]
"""(model, request form, rows) -> its bodies file."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("main", "peers", "ray"), default="main")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s, pairs 4 x 2 s")
    p.add_argument("--rounds", type=int, help="measured runs per scenario (3; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measured run (5; quick 2)")
    p.add_argument("--warmup", type=float, help="discarded seconds before a scenario (2; quick 1)")
    p.add_argument(
        "--pair-runs",
        type=int,
        help="runs per paired comparison, multiple of 4 (8; quick 4; 0: none)",
    )
    p.add_argument("--pair-duration", type=float, help="seconds per paired run (3; quick 2)")
    p.add_argument("--models", default="iris,breast_cancer", help="comma-separated")
    p.add_argument("--only", default="", help="only scenarios and targets whose name contains this")
    p.add_argument("--baseline-ref", help="git commit to compare the service with, paired")
    p.add_argument("--store", type=Path, help="default $SERVEWELL_STORE, else models/")
    p.add_argument(
        "--no-train", action="store_true", help="skip `python -m training ensure-default`"
    )
    p.add_argument("--peers-venv", type=Path, default=ROOT / ".venv-peers")
    p.add_argument("--ray-config", type=Path, default=ROOT / "serving" / "ray-serve.yaml")
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (2.0 if q else 5.0)
    a.warmup = (1.0 if q else 2.0) if a.warmup is None else a.warmup
    a.pair_runs = (4 if q else 8) if a.pair_runs is None else a.pair_runs
    a.pair_duration = a.pair_duration or (2.0 if q else 3.0)
    if a.pair_runs % 4:
        p.error("--pair-runs must be a multiple of 4: half on each couple, each wrk first as often")
    a.models = [m for m in a.models.split(",") if m]
    return a


def _suite(args: argparse.Namespace) -> Suite:
    if args.suite == "peers":
        suite = peers_suite(args.models)
    elif args.suite == "ray":
        suite = ray_suite(args.models)
    else:
        suite = main_suite(args.models, args.baseline_ref)
    scenarios = [s for s in suite.scenarios if args.only in s.key]
    targets = [t for t in suite.targets if args.only in t.name or args.only in t.a.key]
    return Suite(scenarios, [t for t in targets if t.paired or t.a in scenarios])


def _bodies(suite: Suite, store: ModelStore, workdir: Path, quick: bool) -> Files:
    """One file of bodies per (model, request form, rows), the same rows in every form."""
    wanted = {(s.model, s.request, s.rows) for s in suite.scenarios}
    wanted |= {
        (s.model, s.request, s.rows) for t in suite.targets if t.paired for s in (t.a, t.b) if s
    }
    files: Files = {}
    for model, request, rows in sorted(wanted):
        manifest = store.manifest(model, store.production(model) or store.versions(model)[-1])
        count = (2 if quick else 4) if rows > 1 else (200 if quick else 500)
        encoded = [
            bodies.encode(
                request,
                manifest.features,
                bodies.sample_rows(manifest.features, rows, seed),
                manifest.input_format == "dataframe",
            )
            for seed in range(count)
        ]
        files[model, request, rows] = bodies.write(
            workdir / f"{model}-{request}-{rows}.rec", encoded
        )
    return files


def _check(
    server: servers.Running, s: Scenario, file: Path, answers: dict[tuple[str, int], Any]
) -> str | None:
    """POST the first bodies once: why they are not answered like predictions, or None. Warns
    when another scenario's server predicted differently for the same rows (``answers``)."""
    sent = bodies.read(file, 5 if s.rows == 1 else 1)
    try:
        got = [p for body in sent for p in bodies.post(server.url + s.path, body)]
    except ValueError as exc:
        return str(exc)
    if len(got) != s.rows * len(sent):
        return f"{len(got)} predictions for {s.rows * len(sent)} rows: {got[:5]}"
    first = answers.setdefault((s.model, s.rows), (s.key, got))
    if not bodies.same(first[1], got):
        print(f"WARNING: {s.key} predicts otherwise than {first[0]}", file=sys.stderr)
    return None


def _measure(
    server: servers.Running, s: Scenario, file: Path, args: argparse.Namespace, warmup: float
) -> Measured:
    url = server.url + s.path
    if warmup > 0:
        wrk.run(args.wrk, url, file, s.connections, warmup, 2.0)
    cpu, host = server.cpu_s(), servers.host_busy_s()
    wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    result = wrk.run(args.wrk, url, file, s.connections, s.duration_s or args.duration, 2.0)
    wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - wrk_cpu
    cpu, host = server.cpu_s() - cpu, servers.host_busy_s() - host
    if server.process.poll() is not None:
        raise wrk.WrkError(f"{server.name} exited: {server.log_tail()}")
    pct = 100 / result.duration_s
    return Measured(result, pct * cpu, pct * max(0.0, host - cpu - wrk_cpu))


def _paired(
    args: argparse.Namespace,
    suite: Suite,
    table: dict[str, Server],
    ctx: servers.Context,
    files: Files,
) -> dict[str, paired.Comparison]:
    """Every paired target, on two fresh instances of each side, started in mirrored order."""
    out: dict[str, paired.Comparison] = {}
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Running] = {}

        def get(name: str, i: int) -> servers.Running:
            label = f"{name}#{i}"
            if label not in running:
                print(f"starting {label} ...", flush=True)
                running[label] = servers.start(table[name], ctx, label)
                stack.callback(running[label].stop)
            return running[label]

        for t in suite.targets:
            if not t.paired or (b := t.b) is None:
                continue
            a = t.a
            print(f"[paired] {t.name} ...", flush=True)
            try:
                if a.server == b.server:  # two request forms on two like servers, swapped
                    s1, s2 = get(a.server, 1), get(a.server, 2)
                    couples = [(s1, s2), (s2, s1)]
                else:
                    a1, b1, b2, a2 = (
                        get(a.server, 1),
                        get(b.server, 1),
                        get(b.server, 2),
                        get(a.server, 2),
                    )
                    couples = [(a1, b1), (a2, b2)]
                fa, fb = files[a.model, a.request, a.rows], files[b.model, b.request, b.rows]
                for server, s, f in ((couples[0][0], a, fa), (couples[0][1], b, fb)):
                    if (why := _check(server, s, f, {})) is not None:
                        raise servers.ServerError(why)
                c = paired.compare(
                    couples,
                    (fa, fb),
                    (a.path, b.path),
                    args.wrk,
                    args.pair_runs,
                    args.pair_duration,
                )
            except servers.ServerError as exc:
                c = paired.Comparison(error=str(exc).splitlines()[0])
            out[t.name] = c
            print(f"[paired] {t.name}: " + (c.error or f"{100 * (c.ratio or 0):.1f} %"), flush=True)
    return out


def _rounds(
    args: argparse.Namespace,
    suite: Suite,
    table: dict[str, Server],
    ctx: servers.Context,
    files: Files,
    notes: list[str],
) -> list[Outcome]:
    outcomes = [Outcome(s) for s in suite.scenarios]
    with contextlib.ExitStack() as stack:
        running: dict[str, servers.Running] = {}
        for name in suite.servers:
            print(f"starting {name} ...", flush=True)
            try:
                running[name] = servers.start(table[name], ctx)
                stack.callback(running[name].stop)
            except servers.ServerError as exc:
                print(exc, file=sys.stderr)
        for name, server in running.items():
            if table[name].kind in ("service", "ray"):
                runtimes = {m: _runtime(server, m) for m in args.models}
                notes.append(f"{name} serves with {runtimes}")
        answers: dict[tuple[str, int], tuple[str, list[Any]]] = {}
        for o in outcomes:
            s = o.scenario
            o.error = f"{s.server} did not start" if s.server not in running else None
            # The bare baseline answers a constant: nothing to compare.
            seen = answers if table[s.server].kind != "bare" else {}
            o.error = o.error or _check(
                running[s.server], s, files[s.model, s.request, s.rows], seen
            )
        for r in range(args.rounds):
            for i, o in enumerate(outcomes, 1):
                if o.error is not None:
                    continue
                server = running[o.scenario.server]
                tag = f"[{r + 1}/{args.rounds} {i}/{len(outcomes)}]"
                server.wait_idle()
                try:
                    m = _measure(
                        server,
                        o.scenario,
                        files[o.scenario.model, o.scenario.request, o.scenario.rows],
                        args,
                        args.warmup if r == 0 else 0,
                    )
                except wrk.WrkError as exc:
                    o.error = str(exc)[:500]
                    print(f"{tag} {o.scenario.key}: FAILED {o.error}", flush=True)
                    continue
                o.runs.append(m)
                res = m.result
                print(
                    f"{tag} {o.scenario.key}: {res.requests_per_s:,.0f} req/s, "
                    f"p50 {res.p50_ms:.2f} ms, errors {res.errors}",
                    flush=True,
                )
        stack.close()  # stop them now, to see what they leave behind
        notes += [
            f"WARNING: {n} left processes {s.leftovers}" for n, s in running.items() if s.leftovers
        ]
    return outcomes


def _runtime(server: servers.Running, model: str) -> str | None:
    """The runtime ``GET /models/{name}`` reports (onnx or sklearn)."""
    try:
        with urllib.request.urlopen(f"{server.url}/models/{model}", timeout=10) as resp:
            return str(json.loads(resp.read()).get("runtime"))
    except (OSError, ValueError):
        return None


def _git(*args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.wrk = wrk.find()
    if args.wrk is None:
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 2
    if args.suite == "peers" and not (args.peers_venv / "bin" / "mlserver").is_file():
        print(f"no MLServer in {args.peers_venv}: `make bench-peers` installs it", file=sys.stderr)
        return 2
    store_path = (args.store or Path(os.environ.get("SERVEWELL_STORE", ROOT / "models"))).resolve()
    load = os.getloadavg()[0]
    if not args.no_train:
        env = {**os.environ, "SERVEWELL_STORE": str(store_path)}
        subprocess.run(
            [sys.executable, "-m", "training", "ensure-default"], cwd=ROOT, env=env, check=False
        )
    store = ModelStore(store_path)
    missing = [m for m in args.models if not store.versions(m)]
    if missing:
        print(f"not in the store {store_path}: {missing}; train them first", file=sys.stderr)
        return 2
    # Sockets for c=1000, inherited by wrk and the servers.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(8192, hard)), hard))
    suite = _suite(args)
    table = dict(SERVERS)
    notes = [
        f"1-min load average {load:.2f} at start"
        + (": busy box, figures noisier" if load > 0.5 else "")
    ]
    started = datetime.now(UTC)
    with (
        tempfile.TemporaryDirectory(prefix="servewell-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        ctx = servers.Context(
            store_path,
            args.models,
            Path(tmp),
            peers_venv=args.peers_venv.resolve(),
            ray_config=args.ray_config.resolve(),
        )
        if args.baseline_ref:
            commit = _git("rev-parse", "--verify", args.baseline_ref + "^{commit}")
            if not commit:
                print(f"unknown git commit {args.baseline_ref!r}", file=sys.stderr)
                return 2
            ctx.source[args.baseline_ref] = stack.enter_context(servers.checkout(commit, Path(tmp)))
            table["service@base"] = baseline_server(args.baseline_ref)
            notes.append(f"service@base: {args.baseline_ref} = {commit}")
        files = _bodies(suite, store, Path(tmp), args.quick)
        pairs = _paired(args, suite, table, ctx, files) if args.pair_runs else {}
        outcomes = _rounds(args, suite, table, ctx, files, notes)
    verdicts = report.evaluate(suite.targets, outcomes, pairs)
    notes.append(
        f"1-min load average {os.getloadavg()[0]:.2f} at end; {args.rounds} round(s) x "
        f"{args.duration:g} s, pairs {args.pair_runs} x {args.pair_duration:g} s; "
        f"took {(datetime.now(UTC) - started).seconds} s"
    )
    print("\n" + report.render(outcomes, pairs, verdicts, notes))
    meta = {
        "timestamp": started.strftime("%Y%m%dT%H%M%SZ"),
        "suite": args.suite,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": {
            "host": platform.node(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "git_commit": _git("rev-parse", "HEAD"),
            "store": str(store_path),
        },
    }
    document = report.to_json(meta, outcomes, pairs, verdicts, notes)
    stem = meta["timestamp"] if args.suite == "main" else f"{args.suite}-{meta['timestamp']}"
    for path in report.write(document, args.results_dir, stem, chart=not args.no_chart):
        print(f"wrote {path}")
    failed = any(o.error for o in outcomes) or any(c.error for c in pairs.values())
    missed = any(v.status == "MISS" for v in verdicts)
    return 1 if failed or (args.fail_on_miss and missed) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every server is stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written", file=sys.stderr)
        sys.exit(130)
