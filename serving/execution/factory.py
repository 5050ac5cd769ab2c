"""Build the executor the settings ask for (``inference``: ``pool`` or ``inline``)."""

from __future__ import annotations

from serving.execution.executor import Executor, ModelKey
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool
from serving.execution.runtime import LoadedModel, load
from serving.settings import Settings
from serving.store import ModelStore


def build_executor(settings: Settings, store: ModelStore) -> Executor:
    """An executor not started yet: :meth:`Executor.open` loads the first models."""
    policy = settings.runtime_policy()
    if settings.inference == "inline":

        def loader(key: ModelKey) -> LoadedModel:
            return load(store, *key, policy)

        return InlineExecutor({}, loader)
    return InferencePool(
        store.root,
        [],
        settings.pool_size,
        settings.startup_timeout_s,
        signing_key=settings.signing_key_bytes,
        policy=policy,
        hang_timeout=settings.worker_hang_timeout_s,
    )
