"""`python -m training prune NAME --keep N`: remove old versions, never what rollback needs.

Kept: the newest ``keep`` versions, the production version and the one before it in the
promotion history (what ``rollback`` returns to). The store removes them so that readers see a
version whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.store import ModelNotFoundError, ModelStore, StoreError


@dataclass(frozen=True)
class PruneResult:
    kept: list[int]
    removed: list[int]


def prune(store: ModelStore, name: str, keep: int) -> PruneResult:
    """Remove every version of ``name`` but the ones the module docstring lists."""
    if keep < 1:
        raise StoreError("keep at least one version (KEEP=1 or more)")
    versions = store.versions(name)
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r} in the store")
    kept = set(versions[-keep:])
    kept |= {v for v in (store.production(name), store.previous_production(name)) if v}
    removed = [v for v in versions if v not in kept]
    store.remove_versions(name, removed)
    return PruneResult(kept=sorted(kept), removed=removed)
