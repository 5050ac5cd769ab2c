"""One report: the targets evaluated, a table on stdout, a JSON file and a PNG chart."""

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.paired import Comparison
from bench.scenarios import Figure, Scenario, Target
from bench.wrk import Result

Status = Literal["PASS", "MISS", "INFO", "N/A"]
Pairs = dict[str, Comparison]  # by target name


@dataclass(frozen=True)
class Measured:
    """One measured wrk run, with the CPU the server and everything else used meanwhile."""

    result: Result
    server_cpu: float
    """% of one core, workers included."""
    other_cpu: float
    """% of one core used by neither the server nor wrk: noise, ideally about 0."""
    capture: dict[str, float] = field(default_factory=dict)
    """With capture on, by figure: rows written per second, rows dropped, queue's peak sample."""
    rss_mb: float | None = None
    """Resident memory of the server's processes after the run (MiB, summed)."""


@dataclass
class Outcome:
    """Every round of one scenario; figures come from the median round by req/s."""

    scenario: Scenario
    runs: list[Measured] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> Measured | None:
        if self.error is not None or not self.runs:
            return None
        ranked = sorted(self.runs, key=lambda m: m.result.requests_per_s)
        return ranked[(len(ranked) - 1) // 2]  # a real run, never an average

    def figure(self, figure: Figure) -> float | None:
        if (m := self.median) is None:
            return None
        if figure == "errors":  # every failed request of every round counts
            return float(sum(r.result.errors for r in self.runs))
        if figure in ("dropped", "queue max"):  # so does every round's capture queue
            seen = [r.capture[figure] for r in self.runs if figure in r.capture]
            return (sum if figure == "dropped" else max)(seen) if seen else None
        if figure == "rss MiB":  # the most any round left resident
            held = [r.rss_mb for r in self.runs if r.rss_mb is not None]
            return max(held) if held else None
        if figure == "capture rows/s":
            return m.capture.get(figure)
        if figure == "p50 ms":
            return m.result.p50_ms
        if figure == "p99 ms":
            return m.result.p99_ms
        rps = m.result.requests_per_s
        return rps * self.scenario.rows if figure == "rows/s" else rps

    def __str__(self) -> str:
        if self.median is None:
            return f"{self.scenario.key}: FAILED {self.error}"
        r = self.runs[-1].result
        figures = f"{r.requests_per_s:,.0f} req/s, p50 {r.p50_ms:.2f} ms, {r.errors} errors"
        return f"{self.scenario.key}: {figures}"

    @property
    def spread(self) -> float | None:
        """(max - min) / median req/s over the rounds."""
        rates = [r.result.requests_per_s for r in self.runs]
        median = self.figure("req/s")
        return (max(rates) - min(rates)) / median if len(rates) > 1 and median else None


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None
    status: Status


def evaluate(targets: list[Target], outcomes: list[Outcome], pairs: Pairs) -> list[Verdict]:
    by_key = {o.scenario.key: o for o in outcomes}
    verdicts = []
    for t in targets:
        value: float | None
        if t.paired:
            value = pairs[t.name].ratio if t.name in pairs else None
        else:
            a = by_key[t.a.key].figure(t.figure) if t.a.key in by_key else None
            b = by_key[t.b.key].figure(t.figure) if t.b and t.b.key in by_key else None
            value = a if t.b is None else (a / b if a is not None and b else None)
        low = -math.inf if t.at_least is None else t.at_least
        high = math.inf if t.at_most is None else t.at_most
        status: Status = "INFO" if t.at_least is None and t.at_most is None else "PASS"
        if value is None or not low <= value <= high:
            status = "N/A" if value is None else "MISS"
        verdicts.append(Verdict(t, value, status))
    return verdicts


def shown(target: Target, value: float | None) -> str:
    if value is None:
        return "-"
    if target.b is not None:
        return f"{value:.2f}x" if value >= 2 else f"{100 * value:.1f} %"
    return f"{value:.2f} ms" if target.figure == "p50 ms" else f"{value:.0f}"


def goal(target: Target) -> str:
    if target.at_least is not None:
        return ">= " + shown(target, target.at_least)
    return "" if target.at_most is None else "<= " + shown(target, target.at_most)


def _table(header: str, rows: list[list[str]]) -> list[str]:
    """Columns of ``header`` (space-separated; ``_`` is a space) over ``rows``, aligned."""
    rows = [[h.replace("_", " ") for h in header.split()], *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    just = [str.ljust, *[str.rjust] * (len(widths) - 1)]
    lines = ["  ".join(j(c, w) for j, c, w in zip(just, r, widths, strict=True)) for r in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def _num(value: float | None, spec: str, scale: float = 1) -> str:
    return "-" if value is None else format(value * scale, spec)


def render(outcomes: list[Outcome], pairs: Pairs, verdicts: list[Verdict], notes: list[str]) -> str:
    rows = []
    for o in outcomes:
        m = o.median
        if m is None:
            rows.append([o.scenario.key, "FAILED", *[""] * 6, (o.error or "")[:60]])
            continue
        r, rows_s = m.result, o.figure("rows/s") if o.scenario.rows > 1 else None
        errors, spread = _num(o.figure("errors"), ".0f"), _num(o.spread, ".0f", 100)
        cells = [f"{r.requests_per_s:,.0f}", _num(rows_s, ",.0f"), f"{r.p50_ms:.2f}"]
        cells += [f"{r.p99_ms:.2f}", errors, spread, f"{m.server_cpu:.0f}", f"{m.other_cpu:.0f}"]
        rows.append([o.scenario.key, *cells])
    head = "scenario req/s rows/s p50_ms p99_ms errors spread_% cpu_% other_%"
    lines = _table(head, rows) if rows else []
    pair_rows = []
    for name, c in pairs.items():
        low, high = c.spread or (None, None)
        cells = [_num(v, ".1f", 100) for v in (c.ratio, low, high)]
        pair_rows.append([name, str(len(c.runs)), *cells, (c.error or "")[:60]])
    if pair_rows:
        head = "paired_on_one_core:_A_vs_B runs ratio_% min_% max_% error"
        lines += ["", *_table(head, pair_rows)]
    rows = [[v.target.name, shown(v.target, v.value), goal(v.target), v.status] for v in verdicts]
    lines += ["", *_table("target measured goal status", rows)]
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)])


def to_json(
    outcomes: list[Outcome], pairs: Pairs, verdicts: list[Verdict], notes: list[str]
) -> dict[str, Any]:
    scenarios = [
        {**asdict(o.scenario), "key": o.scenario.key, "error": o.error}
        | {f: o.figure(f) for f in ("req/s", "rows/s", "p50 ms", "errors")}
        | {"rounds": [asdict(r) for r in o.runs]}
        for o in outcomes
    ]
    paired = {
        n: {"ratio": c.ratio, "error": c.error, "runs": [asdict(r) for r in c.runs]}
        for n, c in pairs.items()
    }
    targets = [
        {"name": v.target.name, "value": v.value, "goal": goal(v.target), "status": v.status}
        | {"ratio": bool(v.target.b)}
        for v in verdicts
    ]
    return {"scenarios": scenarios, "paired": paired, "targets": targets, "notes": notes}


def write(document: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    """``<stem>.json`` and ``.png`` in ``directory``, copied to ``latest.*``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{stem}.json", directory / f"{stem}.png"]
    written[0].write_text(json.dumps(document, indent=2, default=str) + "\n")
    draw(document, written[1])
    for path in written:
        shutil.copyfile(path, path.with_stem("latest"))
    return written


def draw(document: dict[str, Any], path: Path) -> None:
    """Every ratio target, its bar coloured by its status (the JSON holds the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [t for t in document["targets"] if t["ratio"] and t["value"]]
    fig, ax = plt.subplots(figsize=(11, 0.3 * len(ratios) + 1.5), layout="constrained")
    colors = [{"PASS": "tab:green", "MISS": "tab:red"}.get(t["status"], "tab:gray") for t in ratios]
    bars = ax.barh([t["name"] for t in ratios], [t["value"] for t in ratios], color=colors)
    ax.bar_label(bars, [f"{t['value']:.2f} {t['goal']}" for t in ratios], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("A / B (log scale; green: goal met, red: missed, gray: no goal)")
    ax.set_title(f"servewell bench, {document['suite']}, {document['timestamp']}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
