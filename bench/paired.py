"""Paired A/B runs on one shared core, for comparisons that must resolve a few per cent
(bench/README.md, "How it measures"): both servers loaded at once, their event loops pinned to
one CPU, the ratio of their main processes' CPU per request (of every process of each server,
``whole``, when the sides are two commits); the median run is the figure.
Two instances of each side start in mirrored order (A1, B1, B2, A2), half the runs on each
couple: the one started first measured 1-2 % more CPU per request.
"""

import os
import statistics
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.servers import Running

STARVED = 0.2
"""A run in which one side answered less than this share of the other's requests compares
nothing: that side's loop was starved, and its CPU per request is not its code's."""

Load = tuple[str, Path, int]
"""What one side sends: path, bodies file, connections."""


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
        """None when there are no runs, or they compare nothing (:attr:`error`)."""
        if not self.runs or self.error is not None:
            return None
        return statistics.median(r.ratio for r in self.runs)

    @property
    def spread(self) -> tuple[float, float] | None:
        ratios = [r.ratio for r in self.runs]
        return (min(ratios), max(ratios)) if ratios else None


def one_run(
    a: Running, b: Running, loads: list[Load], args: Namespace, a_first: bool, whole: bool = False
) -> Run:
    """A sent ``loads[0]`` and B ``loads[1]``, both at once."""
    others = set(sorted(os.sched_getaffinity(0))[1:])
    sides = [(a, *loads[0]), (b, *loads[1])][:: 1 if a_first else -1]
    cpu = Running.cpu_s if whole else Running.main_cpu_s
    before = [cpu(s) for s in (a, b)]
    cmds = [
        wrk.command(args.wrk, s.address(p), f, c, args.pair_duration, 2) for s, p, f, c in sides
    ]
    procs = {s.name: wrk.start(cmd, others) for (s, *_), cmd in zip(sides, cmds, strict=True)}
    try:
        got = {name: wrk.finish(proc, args.pair_duration + 30) for name, proc in procs.items()}
    finally:
        for proc in procs.values():  # if one failed, the other may not go on loading its server
            proc.kill()
            proc.wait()
    us = []
    for server, spent in zip((a, b), before, strict=True):
        r = got[server.name]
        if r.errors or not r.requests or server.process.poll() is not None:
            raise wrk.WrkError(f"{server.name}: {r.errors} errors, {r.requests} answers")
        us.append(1e6 * (cpu(server) - spent) / r.requests)
    return Run(got[a.name].requests_per_s, got[b.name].requests_per_s, *us)


def compare(
    couples: list[tuple[Running, Running]], loads: list[Load], args: Namespace, whole: bool = False
) -> Comparison:
    """``args.pair_runs`` runs of ``args.pair_duration`` s, half on each (A, B) couple, after a
    discarded warm-up run on each; the wrk of A and B start first in turns."""
    if len(cpus := sorted(os.sched_getaffinity(0))) < 2:
        return Comparison(error="needs 2 CPUs: one for both event loops, one for the rest")
    measured: list[Run] = []
    half = args.pair_runs // 2
    try:
        for couple in couples:
            for server in couple:
                server.pin(cpus[0])
            try:
                runs = [one_run(*couple, loads, args, i % 2 == 0, whole) for i in range(half + 1)]
                measured += runs[1:]  # the first warmed up
            finally:
                for server in couple:
                    server.pin(None)
    except wrk.WrkError as exc:
        return Comparison(error=str(exc))
    return judged(tuple(measured))


def judged(runs: tuple[Run, ...]) -> Comparison:
    """The comparison of ``runs``, refused when one side was starved in any of them."""
    starved = [r for r in runs if min(r.a_rps, r.b_rps) < STARVED * max(r.a_rps, r.b_rps)]
    if starved:
        worst = min(starved, key=lambda r: min(r.a_rps, r.b_rps) / max(r.a_rps, r.b_rps))
        why = f"one side starved in {len(starved)} of {len(runs)} runs"
        return Comparison(runs, f"{why} (req/s {worst.a_rps:.0f} vs {worst.b_rps:.0f})")
    return Comparison(runs)
