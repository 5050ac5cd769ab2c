"""Two workloads on one server at low load, in short runs that alternate.

At c=1 a request's latency is mostly waiting (on the event loop, the pool, the wakeups), so its
req/s is 1 / latency, and the rounds, minutes apart on this shared box, differ by up to 50 %
(``spread`` in the table). Runs of the two workloads back to back see nearly the same box: the
median over the ratios of adjacent runs is the figure, and which workload runs first
alternates, so that neither always gets the fresher box.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench import wrk
from bench.servers import RunningServer
from bench.shared_core import PairLoad


@dataclass(frozen=True)
class Alternation:
    """B's req/s over A's, on one server, from alternating runs; ``error`` says why none."""

    name: str
    model: str
    connections: int
    duration_s: float
    ratios: tuple[float, ...] = ()
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None


def alternate(
    name: str,
    server: RunningServer,
    *,
    model: str,
    a: PairLoad,
    b: PairLoad,
    wrk_path: str,
    runs: int,
    duration_s: float,
    connections: int,
    timeout_s: float,
) -> Alternation:
    """``runs`` ratios of B's req/s to A's, each from one run of either, after one discarded
    warm-up pair; make ``runs`` even, so that each workload runs first as often."""
    ratios: list[float] = []
    try:
        for i in range(runs + 1):
            order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
            rates = {}
            for side, load in order:
                run = wrk.run(
                    wrk_path,
                    server.url,
                    load.path,
                    load.bodies_file,
                    connections=connections,
                    threads=1,
                    duration_s=duration_s,
                    timeout_s=timeout_s,
                    script=load.script,
                ).result
                if run.errors.total or run.requests == 0:
                    raise wrk.WrkError(
                        f"{server.spec.name} {load.path}: {run.errors.total} errors, "
                        f"{run.requests} answers"
                    )
                rates[side] = run.requests_per_s
            if i > 0:
                ratios.append(rates["b"] / rates["a"])
    except wrk.WrkError as exc:
        return Alternation(name, model, connections, duration_s, error=str(exc))
    return Alternation(name, model, connections, duration_s, tuple(ratios))


def summary_rows(alternations: list[Alternation]) -> list[list[str]]:
    """Table rows: comparison, model, connections, runs, median ratio (range), or the error."""
    rows = []
    for x in alternations:
        if x.ratio is None:
            rows.append([x.name, x.model, str(x.connections), "0", "-", x.error or "no runs"])
            continue
        low, high = min(x.ratios), max(x.ratios)
        rows.append(
            [
                x.name,
                x.model,
                str(x.connections),
                str(len(x.ratios)),
                f"{100 * x.ratio:.1f} % ({100 * low:.0f}-{100 * high:.0f} %)",
                "",
            ]
        )
    return rows
