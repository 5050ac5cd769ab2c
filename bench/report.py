"""One report: the targets evaluated, a table on stdout, a JSON file and a PNG chart."""

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.paired import Comparison
from bench.scenarios import Figure, Scenario, Target
from bench.wrk import Result

Status = Literal["PASS", "MISS", "INFO", "N/A"]


@dataclass(frozen=True)
class Measured:
    """One measured wrk run, with the CPU the server and everything else used meanwhile."""

    result: Result
    server_cpu: float
    """% of one core, workers included."""
    other_cpu: float
    """% of one core used by neither the server nor wrk: noise, ideally about 0."""


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
        m = self.median
        if m is None:
            return None
        if figure == "errors":  # every failed request of every round counts
            return float(sum(r.result.errors for r in self.runs))
        if figure == "p50 ms":
            return m.result.p50_ms
        rps = m.result.requests_per_s
        return rps * self.scenario.rows if figure == "rows/s" else rps

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


def evaluate(
    targets: list[Target], outcomes: list[Outcome], paired: dict[str, Comparison]
) -> list[Verdict]:
    by_key = {o.scenario.key: o for o in outcomes}
    verdicts = []
    for t in targets:
        value: float | None
        if t.paired:
            value = paired[t.name].ratio if t.name in paired else None
        else:
            a = by_key[t.a.key].figure(t.figure) if t.a.key in by_key else None
            b = by_key[t.b.key].figure(t.figure) if t.b and t.b.key in by_key else None
            value = a if t.b is None else (a / b if a is not None and b else None)
        status: Status = "INFO" if t.at_least is None and t.at_most is None else "PASS"
        if value is None:
            status = "N/A"
        elif (t.at_least is not None and value < t.at_least) or (
            t.at_most is not None and value > t.at_most
        ):
            status = "MISS"
        verdicts.append(Verdict(t, value, status))
    return verdicts


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 2 else f"{100 * value:.1f} %"


def shown(target: Target, value: float | None) -> str:
    if value is None:
        return "-"
    if target.b is not None:
        return _ratio(value)
    return f"{value:.2f} ms" if target.figure == "p50 ms" else f"{value:.0f}"


def goal(target: Target) -> str:
    if target.at_least is not None:
        return ">= " + shown(target, target.at_least)
    return "" if target.at_most is None else "<= " + shown(target, target.at_most)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(
    outcomes: list[Outcome],
    paired: dict[str, Comparison],
    verdicts: list[Verdict],
    notes: list[str],
) -> str:
    rows = []
    for o in outcomes:
        m = o.median
        if m is None:
            rows.append([o.scenario.key, "FAILED", "", "", "", "", "", "", (o.error or "")[:60]])
            continue
        r = m.result
        rows.append(
            [
                o.scenario.key,
                f"{r.requests_per_s:,.0f}",
                _num(o.figure("rows/s"), ",.0f") if o.scenario.rows > 1 else "",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                _num(o.figure("errors"), ".0f"),
                _num(o.spread and 100 * o.spread, ".0f"),
                f"{m.server_cpu:.0f}",
                f"{m.other_cpu:.0f}",
            ]
        )
    head = [
        "scenario",
        "req/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "spread %",
        "cpu %",
        "other %",
    ]
    lines = _table(head, rows) if rows else []
    if paired:
        pair_rows = []
        for name, c in paired.items():
            low_high = c.spread
            pair_rows.append(
                [
                    name,
                    str(len(c.runs)),
                    _num(c.ratio and 100 * c.ratio, ".1f"),
                    "-" if low_high is None else f"{100 * low_high[0]:.1f}-{100 * low_high[1]:.1f}",
                    (c.error or "")[:60],
                ]
            )
        head = ["paired on one core: A vs B throughput", "runs", "ratio %", "range %", "error"]
        lines += ["", *_table(head, pair_rows)]
    target_rows = [
        [v.target.name, shown(v.target, v.value), goal(v.target), v.status] for v in verdicts
    ]
    lines += ["", *_table(["target", "measured", "goal", "status"], target_rows)]
    return "\n".join([*lines, "", *(f"- {n}" for n in notes)])


def to_json(
    meta: dict[str, Any],
    outcomes: list[Outcome],
    paired: dict[str, Comparison],
    verdicts: list[Verdict],
    notes: list[str],
) -> dict[str, Any]:
    return {
        **meta,
        "scenarios": [
            {
                **asdict(o.scenario),
                "key": o.scenario.key,
                "error": o.error,
                "req_per_s": o.figure("req/s"),
                "rows_per_s": o.figure("rows/s"),
                "p50_ms": o.figure("p50 ms"),
                "errors": o.figure("errors"),
                "rounds": [asdict(r) for r in o.runs],
            }
            for o in outcomes
        ],
        "paired": {
            name: {"ratio": c.ratio, "error": c.error, "runs": [asdict(r) for r in c.runs]}
            for name, c in paired.items()
        },
        "targets": [
            {
                "name": v.target.name,
                "value": v.value,
                "goal": goal(v.target),
                "status": v.status,
                "paired": v.target.paired,
                "ratio": v.target.b is not None,
            }
            for v in verdicts
        ],
        "notes": notes,
    }


def write(document: dict[str, Any], directory: Path, stem: str, chart: bool) -> list[Path]:
    """``<stem>.json`` (and ``.png``) in ``directory``, copied to ``latest.*``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{stem}.json"]
    written[0].write_text(json.dumps(document, indent=2) + "\n")
    if chart:
        written.append(draw(document, directory / f"{stem}.png"))
    for path in written:
        shutil.copyfile(path, path.with_stem("latest"))
    return written


def draw(document: dict[str, Any], path: Path) -> Path:
    """Median req/s of every scenario, and every ratio target against its goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [s for s in document["scenarios"] if s["req_per_s"]]
    ratios = [t for t in document["targets"] if t["ratio"] and t["value"]]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(14, 0.3 * max(len(done), len(ratios), 8) + 1.5), layout="constrained"
    )
    ax1.barh([s["key"] for s in done], [s["req_per_s"] for s in done], color="tab:blue")
    ax1.set_xscale("log")
    ax1.invert_yaxis()
    ax1.set_xlabel("req/s (median round, log scale)")
    colors = {"PASS": "tab:green", "MISS": "tab:red", "INFO": "tab:gray", "N/A": "white"}
    ax2.barh(
        [t["name"] for t in ratios],
        [t["value"] for t in ratios],
        color=[colors[t["status"]] for t in ratios],
    )
    ax2.set_xscale("log")
    ax2.axvline(1.0, color="black", linewidth=0.8)
    ax2.invert_yaxis()
    ax2.set_xlabel("ratio A / B (green: goal met, red: missed, gray: no goal)")
    ax2.yaxis.tick_right()
    fig.suptitle(f"servewell bench {document['timestamp']} ({document['suite']})")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
