"""The report of a servewell-vs-MLServer run: targets, the side-by-side table, JSON, chart."""

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.scenarios import Measurement, Outcome, Scenario
from bench.wrk import Errors, Latency, WrkResult

SERVEWELL = "servewell"
MLSERVER = "mlserver"
PEERS = (SERVEWELL, MLSERVER)
TARGET_RATIO = 3.0
TARGET_RATIO_CONNECTIONS = 100
ZERO_ERRORS_CONNECTIONS = 1000
SCHEMA_VERSION = 1


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
    """The side-by-side table as Markdown (for bench/RESULTS.md)."""
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
