"""`python -m training compare NAME`: every stored version of a model side by side."""

from __future__ import annotations

import itertools
from typing import Any

from serving.store import Manifest, ModelNotFoundError, ModelStore
from training.run import OUTCOME_KEY

_LABEL = 20
_COLUMN = 22


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"estimator": {"params": {"C": 1}}} -> estimator.params.C."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def spec_changes(old: Manifest, new: Manifest) -> list[str]:
    """What the spec (and the data) changed from ``old`` to ``new``, one line per key."""
    before = flatten({k: v for k, v in old.spec.items() if k != OUTCOME_KEY})
    after = flatten({k: v for k, v in new.spec.items() if k != OUTCOME_KEY})
    lines = [
        f"{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
    if old.data_fingerprint != new.data_fingerprint:
        lines.append(
            f"data: {old.data_fingerprint[:12]} -> {new.data_fingerprint[:12]} "
            f"({old.n_train_rows + old.n_test_rows} -> {new.n_train_rows + new.n_test_rows} rows)"
        )
    return lines


def _metric_names(manifests: list[Manifest]) -> list[str]:
    """Holdout metric names, the primary first."""
    names = {n for m in manifests for n in m.metrics if not n.startswith(("cv_", "baseline_"))}
    primary = manifests[-1].primary_metric
    return sorted(names, key=lambda n: (n != primary, n))


def _spread(metrics: dict[str, float], prefix: str, name: str) -> str:
    mean, std = metrics.get(f"{prefix}{name}_mean"), metrics.get(f"{prefix}{name}_std")
    return "-" if mean is None or std is None else f"{mean:.4f} ± {std:.4f}"


def _params(m: Manifest) -> str:
    params = dict(m.spec.get("estimator", {}).get("params", {}))
    search = (m.spec.get(OUTCOME_KEY) or {}).get("search")
    if search:
        params.update({k.removeprefix("model__"): v for k, v in search["best_params"].items()})
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "(defaults)"


def _cell(text: str) -> str:
    # One column of space at least: a cell that fills its column would run into the next.
    return text if len(text) < _COLUMN else text[: _COLUMN - 2] + "…"


def render(store: ModelStore, name: str) -> str:
    """The comparison table, then the changes from each version to the next."""
    versions = store.versions(name)
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r} in the store")
    production = store.production(name)
    manifests = [store.manifest(name, v) for v in versions]
    rows: list[tuple[str, list[str]]] = [
        (
            "version",
            [
                f"v{m.version}" + (" (production)" if m.version == production else "")
                for m in manifests
            ],
        ),
        ("created (UTC)", [m.created.strftime("%Y-%m-%d %H:%M") for m in manifests]),
        ("estimator", [m.estimator.rsplit(".", 1)[-1] for m in manifests]),
        (
            "data",
            [f"{m.data_fingerprint[:8]} ({m.n_train_rows}+{m.n_test_rows})" for m in manifests],
        ),
        ("cv", [str((m.spec.get(OUTCOME_KEY) or {}).get("cv", "-")) for m in manifests]),
    ]
    for metric in _metric_names(manifests):
        mark = " *" if metric == manifests[-1].primary_metric else ""
        rows.append(
            (
                f"{metric}{mark} holdout",
                [f"{m.metrics[metric]:.4f}" if metric in m.metrics else "-" for m in manifests],
            )
        )
        rows.append((f"{metric} cv", [_spread(m.metrics, "cv_", metric) for m in manifests]))
        rows.append(
            (f"{metric} baseline", [_spread(m.metrics, "baseline_cv_", metric) for m in manifests])
        )
    rows.append(("params", [_params(m) for m in manifests]))
    lines = [
        f"{label:<{_LABEL}}" + "".join(f"{_cell(c):<{_COLUMN}}" for c in cells)
        for label, cells in rows
    ]
    lines.append("(* the primary metric; cv and baseline rows: mean ± std over the folds)")
    lines.append("")
    for old, new in itertools.pairwise(manifests):
        changes = spec_changes(old, new) or ["nothing (same spec and data)"]
        lines.append(f"v{new.version} vs v{old.version}:")
        lines.extend(f"  {change}" for change in changes)
    for m in manifests:
        params = _params(m)
        if len(params) > _COLUMN:
            lines.append(f"v{m.version} params: {params}")
    return "\n".join(lines)
