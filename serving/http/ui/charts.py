"""Line charts drawn on the server as inline SVG: the UI's charts need no script and no
chart library, render offline, and scale with the page.

:func:`line_chart` takes series of (UTC seconds, value or None) points; a None leaves a gap.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

Point = tuple[float, float | None]

PALETTE = ("#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#475569")
_W, _H = 480, 200
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 12, 12, 28


def line_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    title: str,
    reference: tuple[str, float] | None = None,
    y_min: float | None = None,
) -> str:
    """An SVG of the series (one colour each, with a legend), and a dashed horizontal
    ``reference`` line (label, value); says so when there is nothing to draw."""
    values = [v for _, points in series for _, v in points if v is not None]
    times = [t for _, points in series for t, _ in points]
    if reference is not None:
        values.append(reference[1])
    label = escape(title)
    if not times or not values:
        return f'<p class="muted chart-empty">{label}: no data yet.</p>'
    lo = min(values) if y_min is None else min(y_min, *values)
    hi = max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * (_W - _LEFT - _RIGHT)

    def y(v: float) -> float:
        return _TOP + (hi - v) / (hi - lo) * (_H - _TOP - _BOTTOM)

    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{label}" '
        'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
        f"<title>{label}</title>",
        f'<line x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _RIGHT}" y2="{_H - _BOTTOM}" '
        'class="axis"/>',
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}" class="axis"/>',
    ]
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">'
            f"{v:.3g}</text>"
        )
    clock = "%d %b %H:%M" if span > 12 * 3600 else "%H:%M"
    for t, anchor in ((t0, "start"), (t1, "end")):
        stamp = time.strftime(clock, time.localtime(t))
        parts.append(
            f'<text x="{x(t):.1f}" y="{_H - 8}" text-anchor="{anchor}" class="tick">{stamp}</text>'
        )
    if reference is not None:
        ref_label, ref = reference
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(ref):.1f}" x2="{_W - _RIGHT}" y2="{y(ref):.1f}" '
            'class="reference"/>'
        )
        parts.append(
            f'<text x="{_W - _RIGHT - 4}" y="{y(ref) - 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(ref_label)}</text>"
        )
    legend = []
    for i, (name, points) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        for run in _runs(points):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            else:
                path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        legend.append(f'<span style="color:{colour}">&#9632;</span> {escape(name)}')
    parts.append("</svg>")
    keys = f'<p class="legend">{" ".join(legend)}</p>' if len(series) > 1 else ""
    return (
        f'<figure class="chart-box"><figcaption>{label}</figcaption>{"".join(parts)}{keys}</figure>'
    )


def _runs(points: Sequence[Point]) -> list[list[tuple[float, float]]]:
    """The points split at each None: the lines to draw."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in sorted(points, key=lambda p: p[0]):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, v))
    return [run for run in runs if run]
