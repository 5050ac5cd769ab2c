"""What a setting costs, measured as a paired A/B on one shared core.

Two servers that differ only in the setting are loaded at the same time, their event-loop
threads pinned to the same CPU (their other threads, their workers and both wrk processes to
the other CPUs).
Measured on a shared 2-core box, a fixed Python loop runs up to 1.6x slower from one second
to the next. Two servers measured one after the other therefore differ by more than the few
per cent looked for: req/s of consecutive 2-second runs of the *same* server spread by ±25 %.
Two servers sharing a core at the same moment see the same slowdowns. Their CPU time per
request then agrees within about ±3 % between runs of two identical servers (A/A). Each run
gives one ratio, and the median over the runs is reported.

The event loop is what saturates when single-row requests pour in (the workers idle at about
10 %). So the ratio of the loop process's CPU per request is the ratio of the throughputs
the two settings allow: ``throughput(B) / throughput(A) = 1 / cpu_ratio``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import wrk
from bench.servers import RunningServer


@dataclass(frozen=True)
class PairLoad:
    """What wrk sends one server of a pair."""

    path: str
    bodies_file: Path
    script: Path = wrk.LUA_SCRIPT


@dataclass(frozen=True)
class PairRun:
    """One run of both servers side by side."""

    a_requests_per_s: float
    b_requests_per_s: float
    a_cpu_us_per_request: float
    """CPU (user + system, every thread) of A's event-loop process per request, µs."""
    b_cpu_us_per_request: float
    a_loop_us_per_request: float = 0.0
    """CPU of A's event-loop thread alone per request, µs (its helper threads left out)."""
    b_loop_us_per_request: float = 0.0

    @property
    def cpu_ratio(self) -> float:
        return self.b_cpu_us_per_request / self.a_cpu_us_per_request

    @property
    def loop_ratio(self) -> float | None:
        if not self.a_loop_us_per_request:
            return None
        return self.b_loop_us_per_request / self.a_loop_us_per_request

    def swapped(self) -> PairRun:
        return PairRun(
            self.b_requests_per_s,
            self.a_requests_per_s,
            self.b_cpu_us_per_request,
            self.a_cpu_us_per_request,
            self.b_loop_us_per_request,
            self.a_loop_us_per_request,
        )


@dataclass(frozen=True)
class PairedComparison:
    """B against A, for one model; ``error`` says why there are no runs."""

    name: str
    a: str
    b: str
    model: str
    connections: int
    """Per server (both load at once)."""
    duration_s: float
    runs: tuple[PairRun, ...] = ()
    error: str | None = None

    @property
    def cpu_ratio(self) -> float | None:
        """Median over the runs of B's CPU per request / A's."""
        if not self.runs:
            return None
        return statistics.median(r.cpu_ratio for r in self.runs)

    @property
    def loop_ratio(self) -> float | None:
        """Median over the runs of B's event-loop-thread CPU per request / A's: leaves out
        helper threads (the access log's writer), which mostly run on another core; the
        targets use :attr:`cpu_ratio`, which counts them."""
        ratios = [r.loop_ratio for r in self.runs]
        known = [r for r in ratios if r is not None]
        return statistics.median(known) if known and len(known) == len(ratios) else None

    @property
    def throughput_ratio(self) -> float | None:
        """Throughput B allows / throughput A allows (1 / :attr:`cpu_ratio`)."""
        ratio = self.cpu_ratio
        return None if ratio is None else 1.0 / ratio


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _pin(pid: int, allowed: set[int]) -> None:
    """Every thread of ``pid`` (a process's affinity is per thread)."""
    for tid in _tasks(pid):
        _pin_thread(tid, allowed)


def pin_server(server: RunningServer, loop_cpu: int, others: set[int]) -> None:
    """The server's event-loop thread on ``loop_cpu``; its other threads (the access log's
    writer) and its workers on ``others``, where an unpinned deployment's scheduler can put
    them too. Their CPU time still counts: it is read for the whole process."""
    for pid in server.members():
        _pin(pid, others)
    _pin_thread(server.process.pid, {loop_cpu})  # the main thread's id is the process's


def _pin_thread(tid: int, allowed: set[int]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.sched_setaffinity(tid, allowed)


def unpin_server(server: RunningServer) -> None:
    everything = set(cpus())
    for pid in server.members():
        _pin(pid, everything)


def compare(
    name: str,
    a: RunningServer,
    b: RunningServer,
    *,
    model: str,
    path: str,
    bodies_file: Path,
    wrk_path: str,
    runs: int,
    duration_s: float,
    connections: int,
    timeout_s: float,
    script: Path = wrk.LUA_SCRIPT,
    b_load: PairLoad | None = None,
) -> PairedComparison:
    """``runs`` paired runs (after one discarded warm-up run) of ``a`` and ``b``; make it
    even, so that each server's wrk starts first as often. Both are sent ``path`` with
    ``bodies_file`` (by ``script``), or ``b`` its own ``b_load``: then the comparison is of
    two workloads on like servers (e.g. two models, or two protocols)."""
    a_load = PairLoad(path, bodies_file, script)
    loads = (a_load, b_load or a_load)
    result = PairedComparison(name, a.spec.name, b.spec.name, model, connections, duration_s)
    available = cpus()
    if len(available) < 2:
        return replace(result, error="needs 2 CPUs: one for both event loops, one for the rest")
    loop_cpu, others = available[0], set(available[1:])
    measured: list[PairRun] = []
    try:
        for server in (a, b):
            pin_server(server, loop_cpu, others)
        for i in range(runs + 1):
            # Which server's wrk starts (and is read) first alternates, so that any edge it
            # gives cancels out over an even number of runs.
            swap = i % 2 == 1
            first, second = (b, a) if swap else (a, b)
            run = _pair_run(
                (first, second),
                loads[::-1] if swap else loads,
                wrk_path,
                duration_s,
                connections,
                timeout_s,
                others,
            )
            if swap:
                run = run.swapped()
            if i > 0:
                measured.append(run)
    except wrk.WrkError as exc:
        return replace(result, error=str(exc))
    finally:
        for server in (a, b):
            unpin_server(server)
    return replace(result, runs=tuple(measured))


def _pair_run(
    pair: tuple[RunningServer, RunningServer],
    loads: tuple[PairLoad, PairLoad],
    wrk_path: str,
    duration_s: float,
    connections: int,
    timeout_s: float,
    others: set[int],
) -> PairRun:
    a, b = pair
    commands = [
        wrk.command(
            wrk_path,
            server.url,
            load.path,
            load.bodies_file,
            connections=connections,
            threads=1,
            duration_s=duration_s,
            timeout_s=timeout_s,
            script=load.script,
        )
        for server, load in zip(pair, loads, strict=True)
    ]
    before = [s.main_cpu_seconds() for s in (a, b)]
    loop_before = [s.main_thread_cpu_seconds() for s in (a, b)]
    procs: list[subprocess.Popen[str]] = []
    outputs: list[str] = []
    try:
        for cmd in commands:
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    # Pinned before exec: wrk starts its threads at once, and they inherit it.
                    preexec_fn=lambda: os.sched_setaffinity(0, others),
                )
            )
        for proc, cmd in zip(procs, commands, strict=True):
            try:
                stdout, stderr = proc.communicate(timeout=duration_s + timeout_s + 30)
            except subprocess.TimeoutExpired as exc:
                raise wrk.WrkError(f"wrk did not finish: {' '.join(cmd)}") from exc
            if proc.returncode != 0:
                raise wrk.WrkError(f"wrk exited with {proc.returncode}: {stderr.strip()[-2000:]}")
            outputs.append(stdout)
    except OSError as exc:
        raise wrk.WrkError(f"could not run wrk: {exc}") from exc
    finally:
        for proc in procs:  # none may go on loading a server into the next run
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    after = [s.main_cpu_seconds() for s in (a, b)]
    loop_after = [s.main_thread_cpu_seconds() for s in (a, b)]
    results = [wrk.parse_output(out) for out in outputs]
    for server, r in zip((a, b), results, strict=True):
        if r.errors.total or r.requests == 0:
            raise wrk.WrkError(f"{server.spec.name}: {r.errors.total} errors, {r.requests} answers")
        if server.process.poll() is not None:
            raise wrk.WrkError(f"{server.spec.name} exited with {server.process.returncode}")
    cpu = [1e6 * (after[i] - before[i]) / results[i].requests for i in range(2)]
    loop = [1e6 * (loop_after[i] - loop_before[i]) / results[i].requests for i in range(2)]
    return PairRun(
        results[0].requests_per_s, results[1].requests_per_s, cpu[0], cpu[1], loop[0], loop[1]
    )


def combine(halves: Sequence[PairedComparison]) -> PairedComparison:
    """One comparison from several (the same pair of settings on different instances): all
    their runs; an error if any failed."""
    first = halves[0]
    errors = [h.error for h in halves if h.error is not None]
    if errors:
        return replace(first, runs=(), error="; ".join(errors))
    return replace(first, runs=tuple(r for h in halves for r in h.runs))


def summary_rows(comparisons: Sequence[PairedComparison]) -> list[list[str]]:
    """Table rows: comparison, model, runs, A and B µs per request (medians), the CPU ratio
    (and its range), the throughput ratio, the event-loop-thread ratio, and an error."""
    rows = []
    for c in comparisons:
        if c.error is not None or not c.runs:
            rows.append([c.name, c.model, "0", "-", "-", "-", "-", c.error or "no runs"])
            continue
        a_us = statistics.median(r.a_cpu_us_per_request for r in c.runs)
        b_us = statistics.median(r.b_cpu_us_per_request for r in c.runs)
        ratios = sorted(r.cpu_ratio for r in c.runs)
        rows.append(
            [
                c.name,
                c.model,
                str(len(c.runs)),
                f"{a_us:.0f} / {b_us:.0f}",
                f"{c.cpu_ratio:.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})",
                f"{100 * (c.throughput_ratio or 0):.1f} %",
                "-" if c.loop_ratio is None else f"{c.loop_ratio:.3f}",
                "",
            ]
        )
    return rows
