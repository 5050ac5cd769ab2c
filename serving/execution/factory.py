"""Build the executor the settings ask for (``inference``: ``auto``, ``pool`` or ``inline``).

``auto`` (the default) runs batches inline when every production version runs on ONNX Runtime,
and in the process pool otherwise. ONNX Runtime computes without the GIL, so inline its
sessions leave the event loop free as a pool does, without the pool's costs: a message each way
per batch (pickling, two wake-ups) and a worker process holding the models beside the server
process (docs/design.md has the figures). scikit-learn holds the GIL while it predicts: a
version on it needs the pool. A version that a hot swap brings later runs on the executor
chosen at start.
"""

from __future__ import annotations

import logging

from serving.execution.executor import Executor, ModelKey
from serving.execution.inline import InlineExecutor
from serving.execution.pool import InferencePool
from serving.execution.runtime import LoadedModel, load, production_on_sklearn
from serving.settings import Settings
from serving.store import ModelStore

log = logging.getLogger("servewell")


def resolve_inference(settings: Settings, store: ModelStore) -> Settings:
    """``settings`` with ``auto`` inference decided for ``store`` (see the module docstring);
    other choices as they are."""
    if settings.inference != "auto":
        return settings
    on_sklearn = production_on_sklearn(store, settings.runtime_policy())
    inference = "pool" if on_sklearn else "inline"
    why = f"{', '.join(on_sklearn)} run on scikit-learn" if on_sklearn else "all on ONNX Runtime"
    log.info("inference %s: production versions %s (SERVEWELL_INFERENCE)", inference, why)
    return settings.model_copy(update={"inference": inference})


def build_executor(settings: Settings, store: ModelStore) -> Executor:
    """An executor not started yet: :meth:`Executor.open` loads the first models."""
    settings = resolve_inference(settings, store)
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
