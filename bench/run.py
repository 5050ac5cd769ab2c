"""Load benchmark of servewell with wrk on loopback: one driver for every suite (bench/README.md).

Exit status 1 when a scenario failed, 2 when wrk, a model, the peer or the baseline commit is
missing.
"""

import argparse
import contextlib
import importlib.util
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bodies, paired, report, scenarios, servers, wrk
from bench.report import Measured, Outcome
from bench.scenarios import SERVERS, Scenario, Suite
from serving.store import ModelStore

ROOT = servers.ROOT
RESULTS = ROOT / "bench" / "results"
CAPTURED = "servewell_capture_"
FULL = {"rounds": 3, "duration": 5.0, "warmup": 2.0, "pair_runs": 8, "pair_duration": 3.0}
QUICK = {"rounds": 1, "duration": 2.0, "warmup": 1.0, "pair_runs": 4, "pair_duration": 2.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    add = p.add_argument
    add("--suite", choices=("main", "peers", "ray"), default="main")
    add("--quick", action="store_true", help="1 round of 2 s; pairs 4 runs of 2 s")
    add("--rounds", type=int, help="measured runs per scenario (3; quick 1)")
    add("--duration", type=float, help="seconds per measured run (5; quick 2)")
    add("--pair-runs", type=int, help="runs per paired target, 4n (8; quick 4; 0: none)")
    add("--models", default="iris,breast_cancer", help="comma-separated model names")
    add(
        "--only",
        default="",
        help="only the scenarios and targets whose name contains this"
        " (and the scenarios those targets compare)",
    )
    add("--baseline-ref", help="git commit whose service this commit's is compared with, paired")
    add("--store", type=Path, help="model store (default $SERVEWELL_STORE, else models/)")
    add("--no-train", action="store_true", help="skip `python -m training ensure-default`")
    add("--peers-venv", type=Path, default=ROOT / ".venv-peers", help="MLServer's virtualenv")
    a = p.parse_args(argv)
    for name, value in (QUICK if a.quick else FULL).items():
        if getattr(a, name, None) is None:
            setattr(a, name, value)
    if a.pair_runs % 4:
        p.error("--pair-runs: a multiple of 4, half on each couple, each wrk first as often")
    a.models = [m for m in a.models.split(",") if m]
    return a


def select(args: argparse.Namespace) -> Suite:
    """The suite's scenarios and targets, narrowed by ``--only``."""
    if args.suite == "main":
        suite = scenarios.main_suite(args.models, args.baseline_ref)
    else:
        suite = getattr(scenarios, f"{args.suite}_suite")(args.models)
    targets = [t for t in suite.targets if args.only in t.name or args.only in t.a.key]
    # A ratio is only decided when both sides run, so a kept target brings its scenarios.
    wanted = {s for t in targets if not t.paired for s in (t.a, t.b) if s is not None}
    kept = [s for s in suite.scenarios if args.only in s.key or s in wanted]
    return Suite(kept, targets)


class Bench:
    def __init__(self, args: argparse.Namespace, ctx: servers.Context, store: ModelStore) -> None:
        self.args, self.ctx, self.store = args, ctx, store
        self.files: dict[tuple[str, str, int], tuple[Path, list[bodies.Body]]] = {}
        self.answers: dict[tuple[str, int], tuple[str, list[Any]]] = {}

    def bodies(self, s: Scenario) -> tuple[Path, list[bodies.Body]]:
        """The file and bodies of ``s``'s model, form and rows (the same rows in every form)."""
        key = (s.model, s.request, s.rows)
        if key not in self.files:
            manifest = self.store.manifest(s.model, servers.served_version(self.store, s.model))
            count = (4 if s.rows > 1 else 500) // (2 if self.args.quick else 1)
            frame = manifest.input_format == "dataframe"
            rows = (bodies.sample_rows(manifest.features, s.rows, seed) for seed in range(count))
            encoded = [bodies.encode(s.request, manifest.features, r, frame, s.model) for r in rows]
            path = self.ctx.workdir / f"{s.model}-{s.request}-{s.rows}.rec"
            self.files[key] = bodies.write(path, encoded), encoded
        return self.files[key]

    def check(self, server: servers.Running, s: Scenario) -> str | None:
        """POST the first bodies once: why they are not answered like predictions, or None.
        Warns when they are answered otherwise than the same rows were for another scenario."""
        sent = self.bodies(s)[1][: 5 if s.rows == 1 else 1]
        try:
            address = server.address(s.path)
            ask = bodies.call if s.request == "grpc" else bodies.post
            got = [p for body in sent for p in ask(address, body)]
        except (ValueError, servers.ServerError) as exc:
            return str(exc)
        if len(got) != s.rows * len(sent):
            return f"{len(got)} predictions for {s.rows * len(sent)} rows: {got[:5]}"
        if SERVERS[s.server].kind not in ("bare", "hello"):  # which answer a constant
            first = self.answers.setdefault((s.model, s.rows), (s.key, got))
            if not bodies.same(first[1], got):
                print(f"WARNING: {s.key} predicts otherwise than {first[0]}", file=sys.stderr)
        return None

    def start(
        self, stack: contextlib.ExitStack, name: str, label: str, paired: bool = False
    ) -> servers.Running:
        """Start server ``name``, stopped when ``stack`` closes. A pair's servers run one
        server process each: their event loops are what the pair pins to one core."""
        print(f"starting {label} ...", flush=True)
        running = servers.start(SERVERS[name], self.ctx, label, paired=paired)
        stack.callback(running.stop)
        return running

    def measure(self, server: servers.Running, s: Scenario, warmup: float) -> Measured:
        url, file, c = server.address(s.path), self.bodies(s)[0], s.connections
        if warmup > 0:
            wrk.run(self.args.wrk, url, file, c, warmup, 2)
        cpu, host = server.cpu_s(), servers.host_busy_s()
        wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        result, capture = self.load(server, s)
        wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - wrk_cpu
        cpu, host = server.cpu_s() - cpu, servers.host_busy_s() - host
        if server.process.poll() is not None:
            raise wrk.WrkError(f"{server.name} exited: {server.log_tail()}")
        pct, rss = 100 / result.duration_s, server.rss_mb()
        return Measured(result, pct * cpu, pct * max(0.0, host - cpu - wrk_cpu), capture, rss)

    def load(self, server: servers.Running, s: Scenario) -> tuple[wrk.Result, dict[str, float]]:
        """One wrk run; with capture on, the writer's figures (``Measured.capture``): rows
        written per second of wall time between two scrapes of /metrics (below what it can
        write unless it falls behind), rows dropped, the queue's gauge sampled every 0.2 s."""
        on = "SERVEWELL_CAPTURE_URL" in SERVERS[s.server].env
        a, file = self.args, self.bodies(s)[0]
        cmd = wrk.command(a.wrk, server.address(s.path), file, s.connections, a.duration, 2)
        beside = None
        if (other := s.beside) is not None:  # starts first and ends last: it covers the run
            url, others = server.address(other.path), self.bodies(other)[0]
            beside = wrk.start(
                wrk.command(a.wrk, url, others, other.connections, a.duration + 1, 2)
            )
        before, started, proc = server.metrics() if on else {}, time.monotonic(), wrk.start(cmd)
        queue: list[float] = []
        while on and proc.poll() is None:
            queue += [v for k, v in server.metrics().items() if k == CAPTURED + "queue_rows"]
            time.sleep(0.2)
        result = wrk.finish(proc, a.duration + 32)
        if beside is not None:
            wrk.finish(beside, a.duration + 33)
        after, took = server.metrics() if on else {}, time.monotonic() - started
        out = {"queue max": max(queue)} if queue else {}
        for figure, name, per in (("capture rows/s", "rows", took), ("dropped", "dropped", 1)):
            if (key := f"{CAPTURED}{name}_total") in before and key in after:
                out[figure] = (after[key] - before[key]) / per
        return result, out

    def paired(self, suite: Suite) -> dict[str, paired.Comparison]:
        """Every paired target on two instances of each side, started in mirrored order."""
        out: dict[str, paired.Comparison] = {}
        with contextlib.ExitStack() as stack:
            running: dict[str, servers.Running] = {}
            for t in suite.targets:
                if not t.paired or (b := t.b) is None:
                    continue
                print(f"[paired] {t.name} ...", flush=True)
                # Two request forms (or models) on two like servers, swapped; else A1 B1 B2 A2.
                sa, sb, same = t.a.server, b.server, t.a.server == b.server
                order = [(sa, 1), (sb, 2 if same else 1), (sb, 2), (sa, 2)]
                # Across commits work may move between processes (e.g. out of a pool into
                # the server process): count every process of each side then.
                whole = SERVERS[sa].baseline or SERVERS[sb].baseline
                # Against the other commit, this one's side starts afresh too: a server that
                # has served the earlier pairs spent about 5 % more CPU per request than a new
                # one (this commit against itself, iris single rows: 94.8 %).
                tag = "'" if whole else ""
                labels = [f"{name}#{i}{tag}" for name, i in order]
                try:
                    for (name, _), label in zip(order, labels, strict=True):
                        if label not in running:
                            running[label] = self.start(stack, name, label, paired=True)
                    a1, b1, b2, a2 = (running[label] for label in labels)
                    for server, s in ((a1, t.a), (b1, b)):
                        if (why := self.check(server, s)) is not None:
                            raise servers.ServerError(why)
                    loads = [(s.path, self.bodies(s)[0], s.connections) for s in (t.a, b)]
                    couples = [(a1, b1), (b1, a1) if same else (a2, b2)]
                    c = paired.compare(couples, loads, self.args, whole)
                except servers.ServerError as exc:
                    c = paired.Comparison(error=str(exc).splitlines()[0])
                out[t.name] = c
                print(f"[paired] {t.name}: " + (c.error or f"{100 * (c.ratio or 0):.1f} %"))
        return out

    def rounds(self, suite: Suite, notes: list[str]) -> list[Outcome]:
        """Every scenario once per round: a burst of background load spoils one round of many
        scenarios rather than every round of one."""
        outcomes = [Outcome(s) for s in suite.scenarios]
        with contextlib.ExitStack() as stack:
            running: dict[str, servers.Running] = {}
            for name in dict.fromkeys(s.server for s in suite.scenarios):
                try:
                    running[name] = self.start(stack, name, name)
                except servers.ServerError as exc:
                    print(exc, file=sys.stderr)
                    continue
                if SERVERS[name].kind in ("service", "ray"):
                    notes.append(f"{name} serves with {running[name].runtimes(self.args.models)}")
            for o in outcomes:
                server = running.get(o.scenario.server)
                o.error = f"{o.scenario.server} did not start" if server is None else None
                for s in (o.scenario, o.scenario.beside):
                    if s is not None and o.error is None:
                        o.error = self.check(running[o.scenario.server], s)
            for r in range(self.args.rounds):
                for i, o in enumerate((o for o in outcomes if o.error is None), 1):
                    server = running[o.scenario.server]
                    server.wait_idle()
                    try:
                        o.runs.append(self.measure(server, o.scenario, self.args.warmup * (r == 0)))
                    except wrk.WrkError as exc:
                        o.error = str(exc)[:500]
                    print(f"[{r + 1}/{self.args.rounds} {i}] {o}", flush=True)
            stack.close()  # stop them now, to see what they leave behind
        notes += [f"WARNING: {n} left {s.leftovers}" for n, s in running.items() if s.leftovers]
        return outcomes


def prepare(args: argparse.Namespace) -> tuple[ModelStore, str | None] | str:
    """The store, with the models trained unless ``--no-train``, and the baseline commit; else
    why the bench cannot run."""
    if args.wrk is None:
        return wrk.INSTALL_HINT
    if args.suite == "ray" and importlib.util.find_spec("ray") is None:
        return "ray is not installed: `make bench-ray` installs the ray extra"
    if args.suite == "peers" and not (args.peers_venv / "bin" / "mlserver").is_file():
        return f"no MLServer in {args.peers_venv}: `make bench-peers` installs it"
    ref, commit = args.baseline_ref, None
    if ref and not (commit := servers.git("rev-parse", "--verify", ref + "^{commit}")):
        return f"unknown git commit {ref!r}"
    path = (args.store or Path(os.environ.get("SERVEWELL_STORE", ROOT / "models"))).resolve()
    if not args.no_train:
        env = {**os.environ, "SERVEWELL_STORE": str(path)}
        subprocess.run([sys.executable, "-m", "training", "ensure-default"], env=env, check=False)
    store = ModelStore(path)
    needed = dict.fromkeys([*args.models, *(scenarios.EXPLAINED if args.suite == "main" else ())])
    if missing := [m for m in needed if not store.versions(m)]:
        return f"not in the store {path}: {missing}; train them first"
    return store, commit


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.wrk, load = wrk.find(), os.getloadavg()[0]
    if isinstance(prepared := prepare(args), str):
        print(prepared, file=sys.stderr)
        return 2
    store, commit = prepared
    # Sockets for c=1000, inherited by wrk and the servers.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(8192, hard)), hard))
    suite, started = select(args), datetime.now(UTC)
    notes = [f"1-min load average {load:.2f} at start" + (": a busy box" if load > 0.5 else "")]
    if commit is not None:
        notes.append(f"service@base: {args.baseline_ref} = {commit}")
    with tempfile.TemporaryDirectory(prefix="servewell-") as tmp, contextlib.ExitStack() as stack:
        base = ROOT if commit is None else stack.enter_context(servers.checkout(commit, Path(tmp)))
        ctx = servers.Context(store.root, args.models, Path(tmp), args.peers_venv.resolve(), base)
        bench = Bench(args, ctx, store)
        pairs = bench.paired(suite) if args.pair_runs else {}
        outcomes = bench.rounds(suite, notes)
    took = (datetime.now(UTC) - started).seconds
    notes.append(f"1-min load average {os.getloadavg()[0]:.2f} at end; took {took} s")
    verdicts = report.evaluate(suite.targets, outcomes, pairs)
    print("\n" + report.render(outcomes, pairs, verdicts, notes))
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    meta = {"timestamp": stamp, "suite": args.suite, "git_commit": servers.git("rev-parse", "HEAD")}
    meta |= {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()}
    meta["settings"] = vars(args)
    document = meta | report.to_json(outcomes, pairs, verdicts, notes)
    stem = stamp if args.suite == "main" else f"{args.suite}-{stamp}"
    for path in report.write(document, RESULTS, stem):
        print(f"wrote {path}")
    return 1 if any(o.error for o in outcomes) or any(c.error for c in pairs.values()) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds: every server stops
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written", file=sys.stderr)
        sys.exit(130)
