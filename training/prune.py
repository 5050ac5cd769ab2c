"""`python -m training prune NAME --keep N`: remove old versions, never what rollback needs.

Kept: the newest ``keep`` versions, the production version and the one before it in the
promotion history (what ``rollback`` returns to). A version is first renamed to a dot-prefixed
name, which the store's listing ignores, then deleted: readers see it whole or not at all, and
a crash in between leaves only a hidden folder that the next prune clears.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from serving.store import HISTORY_FILE, ModelNotFoundError, ModelStore, StoreError

_PRUNING_PREFIX = ".pruning-"


@dataclass(frozen=True)
class PruneResult:
    kept: list[int]
    removed: list[int]


def _previous_production(
    model_dir: Path, published: set[int], production: int | None
) -> int | None:
    """The version rollback would return to: the latest published entry of the history."""
    try:
        history = [int(v) for v in json.loads((model_dir / HISTORY_FILE).read_text("utf-8"))]
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{model_dir / HISTORY_FILE} is unreadable: {exc}") from None
    earlier = [v for v in history if v in published and v != production]
    return earlier[-1] if earlier else None


def prune(store: ModelStore, name: str, keep: int) -> PruneResult:
    """Remove every version of ``name`` but the ones the module docstring lists."""
    if keep < 1:
        raise StoreError("keep at least one version (KEEP=1 or more)")
    versions = store.versions(name)
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r} in the store")
    model_dir = store.version_path(name, versions[-1]).parent
    production = store.production(name)
    kept = set(versions[-keep:])
    if production is not None:
        kept.add(production)
    previous = _previous_production(model_dir, set(versions), production)
    if previous is not None:
        kept.add(previous)
    removed = [v for v in versions if v not in kept]
    for version in removed:
        path = store.version_path(name, version)
        hidden = model_dir / f"{_PRUNING_PREFIX}{version}-{uuid.uuid4().hex}"
        os.rename(path, hidden)
    for leftover in model_dir.glob(f"{_PRUNING_PREFIX}*"):
        shutil.rmtree(leftover)
    return PruneResult(kept=sorted(kept), removed=removed)
