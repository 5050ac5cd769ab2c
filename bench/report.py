"""Present a run: a text table, a JSON document and a PNG chart."""

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import alternating, runtimes, shared_core
from bench.alternating import Alternation
from bench.runtimes import RuntimeTiming
from bench.scenarios import InProcess, Measurement, Outcome
from bench.shared_core import PairedComparison
from bench.targets import Target

SCHEMA_VERSION = 2
"""2: top-level ``runtimes`` (in-process batch cost per runtime) and ``served_runtimes``."""


@dataclass(frozen=True)
class Run:
    timestamp: str
    """UTC, ``YYYYmmddTHHMMSSZ``; also the results file name."""
    environment: dict[str, Any]
    settings: dict[str, Any]
    outcomes: list[Outcome]
    in_process: list[InProcess]
    targets: list[Target]
    notes: list[str]
    runtimes: list[RuntimeTiming] = field(default_factory=list)
    """In-process cost of one batch call per model, runtime and batch size (``bench.runtimes``)."""
    served_runtimes: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """server -> model -> the runtime ``GET /models/{name}`` reported (None: no answer)."""
    paired: list[PairedComparison] = field(default_factory=list)
    """Shared-core comparisons (``bench.shared_core``): what metrics and logging cost, and
    two workloads on like servers."""
    alternating: list[Alternation] = field(default_factory=list)
    """Two workloads on one server in alternating runs at low load (``bench.alternating``)."""


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render(run: Run) -> str:
    """The human-readable report printed at the end of a run."""
    header = [
        "scenario",
        "req/s",
        "spread",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "conn/read/write/timeout/non2xx",
        "srv CPU",
        "wrk CPU",
        "other CPU",
    ]
    rows = []
    for o in run.outcomes:
        m, e = o.median, o.errors
        if m is None or e is None:
            rows.append([o.scenario.key, *["-"] * 6, "FAILED (below)", "-", "-", "-"])
            continue
        rows.append(
            [
                o.scenario.key,
                _fmt(o.requests_per_s, ",.0f"),
                "-" if o.spread is None else f"{100 * o.spread:.0f} %",
                _fmt(o.rows_per_s, ",.0f"),
                _fmt(m.result.latency.p50, ".2f"),
                _fmt(m.result.latency.p99, ".2f"),
                str(e.total),
                f"{e.connect}/{e.read}/{e.write}/{e.timeout}/{e.status}",
                _fmt(m.cpu_percent(m.server_cpu_s), ".0f") + " %",
                _fmt(m.cpu_percent(m.wrk_cpu_s), ".0f") + " %",
                _fmt(m.cpu_percent(m.other_cpu_s), ".0f") + " %",
            ]
        )
    out = _table(header, rows, right={1, 2, 3, 4, 5, 6, 8, 9, 10})
    failed = [o for o in run.outcomes if o.median is None]
    if failed:
        out.append("")
        out += [f"FAILED {o.scenario.key}: {o.error}" for o in failed]
    if run.in_process:
        out.append("")
        out += _table(
            ["in-process predict", "rows", "rows/s", "1-row predict ms"],
            [
                [p.model, str(p.rows), f"{p.rows_per_s:,.0f}", f"{p.single_row_ms:.3f}"]
                for p in run.in_process
            ],
            right={1, 2, 3},
        )
    if run.runtimes:
        out += ["", "in-process batch call (LoadedModel.predict, as a pool worker runs it):"]
        out.append(runtimes.table(run.runtimes))
    if run.served_runtimes:
        out.append("")
        out += [
            f"{server} serves: "
            + ", ".join(f"{model} {runtime or '?'}" for model, runtime in by_model.items())
            for server, by_model in run.served_runtimes.items()
        ]
    if run.paired:
        out += [
            "",
            "paired on one shared core (bench/shared_core.py): event-loop CPU per request of "
            "A and B, median ratio B/A (range), throughput B allows vs A. Settings: A = "
            "service_metrics or service_quiet, B = service; workloads (B vs A): two service "
            "instances, each sent its own requests:",
        ]
        out += _table(
            [
                "comparison",
                "model",
                "runs",
                "A / B us",
                "B/A CPU",
                "tput",
                "loop thread B/A",
                "",
            ],
            shared_core.summary_rows(run.paired),
            right={2, 3, 4, 5, 6},
        )
    if run.alternating:
        out += [
            "",
            "alternating short runs on the service (bench/alternating.py): B's req/s over A's "
            "(A = typed, B = v2 JSON), median of adjacent runs (range):",
        ]
        out += _table(
            ["comparison", "model", "conns", "runs", "B / A", ""],
            alternating.summary_rows(run.alternating),
            right={2, 3, 4},
        )
    out.append("")
    out += _table(
        ["target", "measured", "goal", "result"],
        [[t.name, t.measured, t.goal, t.status] for t in run.targets],
        right={1},
    )
    out += ["", *run.notes] if run.notes else []
    return "\n".join(out)


def to_json(run: Run) -> dict[str, Any]:
    scenarios = []
    for o in run.outcomes:
        median = o.median
        errors = o.errors
        scenarios.append(
            {
                "key": o.scenario.key,
                **asdict(o.scenario),
                "error": o.error,
                "requests_per_s": o.requests_per_s,
                "rows_per_s": o.rows_per_s,
                "spread": o.spread,
                "errors_all_rounds": None
                if errors is None
                else {**asdict(errors), "total": errors.total},
                "median_round": None if median is None else o.runs.index(median),
                "rounds": [_measurement_json(m) for m in o.runs],
                "predictions_match_in_process": o.predictions_match,
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "timestamp": run.timestamp,
        "environment": run.environment,
        "settings": run.settings,
        "scenarios": scenarios,
        "in_process": [{**asdict(p), "rows_per_s": p.rows_per_s} for p in run.in_process],
        "runtimes": [asdict(t) for t in run.runtimes],
        "served_runtimes": run.served_runtimes,
        "paired": [
            {
                **asdict(c),
                "cpu_ratio": c.cpu_ratio,
                "loop_thread_cpu_ratio": c.loop_ratio,
                "throughput_ratio": c.throughput_ratio,
            }
            for c in run.paired
        ],
        "alternating": [{**asdict(x), "ratio": x.ratio} for x in run.alternating],
        "targets": [{**asdict(t), "measured": t.measured} for t in run.targets],
        "notes": run.notes,
    }


def _measurement_json(m: Measurement) -> dict[str, Any]:
    r = m.result
    return {
        "duration_s": r.duration_s,
        "requests": r.requests,
        "bytes": r.bytes,
        "requests_per_s": r.requests_per_s,
        "latency_ms": asdict(r.latency),
        "errors": {**asdict(r.errors), "total": r.errors.total},
        "server_cpu_percent": m.cpu_percent(m.server_cpu_s),
        "wrk_cpu_percent": m.cpu_percent(m.wrk_cpu_s),
        "other_cpu_percent": m.cpu_percent(m.other_cpu_s),
    }


def write(run: Run, results_dir: Path, *, chart: bool) -> list[Path]:
    """Write ``<timestamp>.json`` (+ ``.png``) and copies named ``latest``; return the paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{run.timestamp}.json"
    json_path.write_text(json.dumps(to_json(run), indent=2) + "\n", encoding="utf-8")
    written = [json_path]
    if chart and any(o.median is not None for o in run.outcomes):
        png_path = results_dir / f"{run.timestamp}.png"
        draw_chart(run, png_path)
        written.append(png_path)
    for path in list(written):
        latest = results_dir / f"latest{path.suffix}"
        shutil.copyfile(path, latest)
        written.append(latest)
    return written


def draw_chart(run: Run, path: Path) -> None:
    """Horizontal bars: throughput, and p50/p99 latency, per scenario (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [o for o in run.outcomes if o.result is not None]
    labels = [o.scenario.key for o in measured]
    colors = {
        "service": "tab:blue",
        "service_sklearn": "tab:purple",
        "bare": "tab:gray",
        "bare_raw": "tab:green",
        "naive": "tab:orange",
    }
    bar_colors = [colors.get(o.scenario.server, "tab:green") for o in measured]
    ys = range(len(measured))
    fig, (ax_rps, ax_lat) = plt.subplots(
        1, 2, figsize=(13, 0.45 * len(measured) + 1.8), sharey=True
    )
    ax_rps.barh(ys, [o.requests_per_s or 0 for o in measured], color=bar_colors)
    for y, o in zip(ys, measured, strict=True):
        label = f" {o.requests_per_s or 0:,.0f}"
        if o.scenario.is_rows:
            label += f" ({o.rows_per_s or 0:,.0f} rows/s)"
        ax_rps.text(o.requests_per_s or 0, y, label, va="center", fontsize=8)
    ax_rps.set_xscale("log")
    ax_rps.set_xlim(right=6 * max(o.requests_per_s or 1 for o in measured))  # room for labels
    ax_rps.set_xlabel("requests/s (log)")
    ax_rps.set_yticks(list(ys), labels)
    ax_rps.invert_yaxis()
    p50 = [o.result.latency.p50 for o in measured if o.result is not None]
    p99 = [o.result.latency.p99 for o in measured if o.result is not None]
    ax_lat.barh([y - 0.2 for y in ys], p50, height=0.4, label="p50", color="tab:blue")
    ax_lat.barh([y + 0.2 for y in ys], p99, height=0.4, label="p99", color="tab:red")
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("latency ms (log)")
    ax_lat.legend(loc="lower right")
    for ax in (ax_rps, ax_lat):
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(
        f"servewell bench {run.timestamp}: wrk on loopback, median of rounds\n"
        "blue/purple: service on ONNX Runtime/scikit-learn; "
        "gray/green/orange: bare/bare_raw/naive baselines"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
