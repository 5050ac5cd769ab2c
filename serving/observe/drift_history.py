"""Input drift over time: the drift window's per-feature PSI and out-of-range share, taken every
:data:`INTERVAL_S` seconds for each model's production version, the last hour of them kept.

The drift report itself (serving.observe.drift) only describes the window as it is now; a chart
of drift needs its past. Taking it costs one report per model every interval, computed in a
thread, never per request.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

INTERVAL_S = 10.0
KEEP = 360
"""Points kept per model version: an hour at the default interval."""


class DriftHistory:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._points: dict[tuple[str, int], deque[dict[str, Any]]] = {}

    def add(
        self, model: str, version: int, report: dict[str, Any], at: float | None = None
    ) -> None:
        """Keep one drift report (as serving.observe.drift makes it), summarised."""
        features = {
            f["name"]: {"psi": f.get("psi"), "out_of_range_share": f.get("out_of_range_share")}
            for f in report["features"]
            if "psi" in f or "out_of_range_share" in f
        }
        point = {"t": time.time() if at is None else at, "rows": report["rows_in_window"]}
        point["features"] = features
        self._points.setdefault((model, version), deque(maxlen=self.keep)).append(point)

    def of(self, model: str, version: int) -> list[dict[str, Any]]:
        return list(self._points.get((model, version), ()))

    def forget(self, keep: set[tuple[str, int]]) -> None:
        for key in [k for k in self._points if k not in keep]:
            del self._points[key]
