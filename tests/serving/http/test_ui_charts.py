"""The UI's server-drawn SVG charts."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from serving.http.ui.charts import line_chart

SVG = "{http://www.w3.org/2000/svg}"


def svg_of(html: str) -> ET.Element:
    match = re.search(r"<svg.*</svg>", html, re.S)
    assert match is not None, html
    return ET.fromstring(match.group(0))


def test_each_series_is_a_line_broken_where_values_are_missing() -> None:
    points = [(0.0, 0.1), (10.0, 0.2), (20.0, None), (30.0, 0.4), (40.0, 0.3)]
    html = line_chart([("a", points), ("b", [(0.0, 0.5), (40.0, 0.5)])], title="PSI <x>")
    svg = svg_of(html)
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 3  # a: two runs around the gap; b: one
    first = [tuple(map(float, p.split(","))) for p in lines[0].get("points", "").split()]
    assert len(first) == 2
    assert first[0][0] < first[1][0]  # time runs left to right
    assert first[0][1] > first[1][1]  # and a larger value is higher up
    assert "PSI &lt;x&gt;" in html  # titles are escaped
    legend = re.search(r'<p class="legend">(.*?)</p>', html)
    assert legend is not None  # a legend for several series
    assert re.findall(r"</span> (\w+)", legend.group(1)) == ["a", "b"]


def test_a_reference_line_and_a_single_point() -> None:
    html = line_chart([("f1", [(5.0, 0.8)])], title="quality", reference=("holdout", 0.9))
    svg = svg_of(html)
    assert svg.find(f"{SVG}circle") is not None
    assert svg.find(f"{SVG}line[@class='reference']") is not None
    assert "holdout" in html


def test_nothing_to_draw_says_so() -> None:
    assert "no data yet" in line_chart([("a", [])], title="drift")
    assert "no data yet" in line_chart([("a", [(1.0, None)])], title="drift")
