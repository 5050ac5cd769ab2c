"""The readiness answer: is every model that should be served loaded, and the executor up?

Reads the registry and asks the executor through its protocol (``status()``), whatever kind
it is. A typo in the store path must not pass for a healthy service that 404s everything, so
an empty store is not ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.core.registry import Registry, ServedModel
from serving.execution.executor import Executor


def readiness(
    registry: Registry,
    executor: Executor | None,
    kind: str,
    store_root: Path,
    store_error: str | None,
) -> tuple[bool, dict[str, Any]]:
    """``(ready, detail)``: the detail is the body of ``GET /ready`` for the admin."""
    status = executor.status() if executor is not None else None
    executor_up = status is not None and status.up
    empty = not registry.models and not registry.unreadable and not registry.broken_names
    ok = (
        executor_up
        and not empty
        and store_error is None
        and not registry.unreadable
        and not registry.broken_names
        and all(isinstance(s, ServedModel) for s in registry.models.values())
    )
    detail: dict[str, Any] = {
        "ready": ok,
        "executor": {
            "kind": kind,
            "up": executor_up,
            "size": status.size if status else 0,
            # While a dead or hung worker is replaced: fewer ready than size.
            "workers_ready": status.workers_ready if status else 0,
            "replacing": status.replacing if status else 0,
            "restarts": (status.restarts or 0) if status else 0,
        },
        "models": _model_states(registry),
    }
    if store_error:
        detail["store_error"] = store_error
    elif empty:
        detail["store_error"] = f"no models to serve: the store {store_root} is empty or missing"
    return ok, detail


def _model_states(registry: Registry) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {}
    for (name, version), served in registry.models.items():
        entry: dict[str, Any] = {"state": served.state.value}
        if served.error:
            entry["error"] = served.error
        if served.warnings:
            entry["warnings"] = served.warnings
        states.setdefault(name, {})[str(version)] = entry
    for (name, version), reason in registry.rejected.items():
        states.setdefault(name, {})[str(version)] = {"state": "rejected", "error": reason}
    for (name, version), reason in registry.unreadable.items():
        states.setdefault(name, {})[str(version)] = {"state": "failed", "error": reason}
    for name, reason in registry.store_problems.items():
        states.setdefault(name, {})["production"] = {"state": "rejected", "error": reason}
    for name, reason in registry.broken_names.items():
        states.setdefault(name, {})["production"] = {"state": "failed", "error": reason}
    return states
