"""Paired A/B runs on one shared core: how few per cent one setting (or commit, or request
form) costs, on a noisy shared box.

On a shared 2-core box a fixed Python loop runs up to 1.6x slower from one second to the next,
so the req/s of consecutive runs of the *same* server spread by ±25 %: runs one after another
cannot resolve a few per cent, and neither can short alternating runs, which still see
different seconds of the box. Here both servers are loaded at once (wrk, c=50 each), their
event-loop threads pinned to the same CPU and everything else (their workers, helper threads,
both wrk processes) to the other CPUs. Both then suffer the same slowdowns, and the ratio of
their main processes' CPU per request is stable: ±3 % between runs of two identical servers.
The event loop is what saturates on single-row requests (the workers idle at about 10 %), so
``throughput(A) / throughput(B) = cpu_per_request(B) / cpu_per_request(A)``.

Two biases are cancelled by the schedule: of two identical servers, the one started first
measured 1-2 % more CPU per request, so two instances of each side are started in mirrored
order (A1, B1, B2, A2) and half the runs use each couple; and the wrk started first alternates
from run to run. The median ratio over all runs is the figure.
"""

import os
import statistics
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.scenarios import PAIR
from bench.servers import Running


@dataclass(frozen=True)
class Run:
    """One run of A and B loaded at once: req/s and main-process CPU µs per request."""

    a_rps: float
    b_rps: float
    a_us: float
    b_us: float

    @property
    def ratio(self) -> float:
        """Throughput A allows / throughput B allows."""
        return self.b_us / self.a_us


@dataclass(frozen=True)
class Comparison:
    runs: tuple[Run, ...] = ()
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        return statistics.median(r.ratio for r in self.runs) if self.runs else None

    @property
    def spread(self) -> tuple[float, float] | None:
        ratios = [r.ratio for r in self.runs]
        return (min(ratios), max(ratios)) if ratios else None


def one_run(
    a: Running, b: Running, loads: list[tuple[str, Path]], args: Namespace, a_first: bool
) -> Run:
    """A sent ``loads[0]`` (path, bodies file) and B ``loads[1]``, both at once."""
    others = set(sorted(os.sched_getaffinity(0))[1:])
    sides = [(a, *loads[0]), (b, *loads[1])][:: 1 if a_first else -1]
    before = {s.name: s.main_cpu_s() for s in (a, b)}
    cmds = [wrk.command(args.wrk, s.url + p, f, PAIR, args.pair_duration, 2.0) for s, p, f in sides]
    procs = [wrk.start(cmd, others) for cmd in cmds]
    try:
        results = {
            s.name: wrk.finish(p, args.pair_duration + 30)
            for (s, *_), p in zip(sides, procs, strict=True)
        }
    finally:
        for proc in procs:  # none may go on loading a server into the next run
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    us = {}
    for server in (a, b):
        r = results[server.name]
        if r.errors or not r.requests or server.process.poll() is not None:
            raise wrk.WrkError(f"{server.name}: {r.errors} errors, {r.requests} answers")
        us[server.name] = 1e6 * (server.main_cpu_s() - before[server.name]) / r.requests
    ra, rb = results[a.name], results[b.name]
    return Run(ra.requests_per_s, rb.requests_per_s, us[a.name], us[b.name])


def compare(
    couples: list[tuple[Running, Running]], loads: list[tuple[str, Path]], args: Namespace
) -> Comparison:
    """``args.pair_runs`` runs of ``args.pair_duration`` s, half on each (A, B) couple, after a
    discarded warm-up run on each; the wrk of A and B start first in turns."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Comparison(error="needs 2 CPUs: one for both event loops, one for the rest")
    measured: list[Run] = []
    try:
        for couple in couples:
            for server in couple:
                server.pin(cpus[0], set(cpus[1:]))
            try:
                for i in range(args.pair_runs // 2 + 1):
                    run = one_run(*couple, loads, args, i % 2 == 0)
                    measured += [run] if i else []
            finally:
                for server in couple:
                    server.unpin()
    except wrk.WrkError as exc:
        return Comparison(error=str(exc))
    return Comparison(tuple(measured))
