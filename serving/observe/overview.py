"""Every model at a glance: what serves it, how its traffic goes, whether its inputs drift and
how it does on labelled traffic. ``GET /overview`` returns it as JSON and the web UI renders it.

It only gathers what the service already knows (the registry, the traffic policy, the recent
request figures, the drift window, the live quality monitor). What belongs to the event loop
(the registry, the drift windows) is read there; the drift statistics and the quality reports,
which take a moment and may read the capture database, are computed in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from serving.capture.monitor import QualityMonitor
from serving.core.dataplane import DataPlane, ServedModel
from serving.observe.observability import Observability
from serving.store import Manifest

PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
"""The usual reading of the population stability index (docs/operations.md, "Input drift")."""
MIN_DRIFT_ROWS = 100
"""Fewer recent rows say too little: a handful of similar rows is far from any distribution."""


async def overview(
    dataplane: DataPlane,
    observability: Observability,
    quality: QualityMonitor | None,
    only: str | None = None,
) -> dict[str, Any]:
    """Call in the event loop. ``only``: that model's entry alone (a model's page), so no other
    model's drift or quality is computed for it."""
    models: list[dict[str, Any]] = []
    drift_jobs: dict[str, Callable[[], dict[str, Any]] | None] = {}
    manifests: dict[str, Manifest] = {}
    if observability.drift is not None:
        observability.process_drift()
    for name, version in sorted(dataplane.default_version.items()):
        if only is not None and name != only:
            continue
        record = dataplane.models.get((name, version))
        served_versions = sorted(v for (n, v) in dataplane.models if n == name)
        entry: dict[str, Any] = {
            "name": name,
            "production_version": version,
            "served_versions": served_versions,
            "state": record.state.value if record is not None else "failed",
        }
        models.append(entry)
        if not isinstance(record, ServedModel):
            entry["error"] = record.error if record is not None else "not loaded"
            continue
        manifest = record.manifest
        entry |= {
            "task": manifest.task.value,
            "estimator": manifest.estimator,
            "runtime": record.runtime,
            "primary_metric": manifest.primary_metric,
            "holdout": manifest.metrics.get(manifest.primary_metric),
            "traffic": _traffic(dataplane, name),
            "recent": _recent(observability, name, served_versions),
        }
        tracker = observability.drift
        if tracker is not None:  # the report's copy of the window is taken here, in the loop
            drift_jobs[name] = tracker.report(record.key)
        manifests[name] = manifest
    computed = await asyncio.to_thread(_compute, drift_jobs, manifests, quality)
    for entry in models:
        if entry["name"] in computed:
            entry["drift"], entry["quality"] = computed[entry["name"]]
            entry["degraded"] = bool(entry["quality"] and entry["quality"]["degraded"])
    broken = [
        {"name": n, "state": "failed", "error": e}
        for n, e in dataplane.broken_names.items()
        if only is None or n == only
    ]
    return {"models": models + broken}


def _compute(
    drift_jobs: dict[str, Callable[[], dict[str, Any]] | None],
    manifests: dict[str, Manifest],
    quality: QualityMonitor | None,
) -> dict[str, tuple[dict[str, Any], dict[str, Any] | None]]:
    """Blocking: drift statistics of the window copies, and live quality."""
    return {
        name: (_drift(drift_jobs.get(name), tracked=name in drift_jobs), _quality(quality, m))
        for name, m in manifests.items()
    }


def _traffic(dataplane: DataPlane, name: str) -> dict[str, Any]:
    route = dataplane.registry.routes.get(name)
    if route is None:
        return {"mode": "production"}
    policy = route.policy
    out: dict[str, Any] = {"mode": policy.mode.value}
    out["weights"] = {str(v): share for v, share in policy.weights}
    if policy.shadow is not None:
        out["shadow"] = policy.shadow
        out["sample"] = policy.sample
    return out


def _recent(observability: Observability, name: str, versions: list[int]) -> dict[str, Any]:
    recent = observability.recent
    if recent is None:
        return {"available": False, "reason": "metrics are off (SERVEWELL_METRICS=false)"}
    figures = {v: recent.of(name, v) for v in versions}
    if any(f is None for f in figures.values()):
        return {"available": False, "reason": "the service started moments ago"}
    return {
        "available": True,
        "versions": {str(v): f.to_json() for v, f in figures.items() if f is not None},
    }


def _drift(compute: Callable[[], dict[str, Any]] | None, tracked: bool) -> dict[str, Any]:
    if not tracked:
        return {"status": "off"}
    if compute is None:
        return {"status": "no_data", "rows_in_window": 0}
    report = compute()
    rows = report["rows_in_window"]
    if rows < MIN_DRIFT_ROWS:
        return {"status": "too_few_rows" if rows else "no_data", "rows_in_window": rows}
    psi = [f["psi"] for f in report["features"] if f.get("psi") is not None]
    outside = [f["out_of_range_share"] for f in report["features"] if "out_of_range_share" in f]
    worst = max(psi, default=None)
    status = "ok"
    if worst is not None and worst > PSI_SIGNIFICANT:
        status = "significant"
    elif worst is not None and worst > PSI_MODERATE:
        status = "moderate"
    return {
        "status": status,
        "rows_in_window": rows,
        "max_psi": worst,
        "max_out_of_range_share": max((o for o in outside if o is not None), default=None),
        "features": report["features"],
    }


def _quality(quality: QualityMonitor | None, manifest: Manifest) -> dict[str, Any] | None:
    if quality is None:
        return None
    try:
        report = quality.report(manifest)
    except Exception as exc:  # a side system: the overview still answers
        return {"status": "unavailable", "degraded": False, "reason": type(exc).__name__}
    return {
        "status": report.status,
        "live": report.live,
        "holdout": report.holdout,
        "degraded": report.degraded,
        "reason": report.reason,
    }
