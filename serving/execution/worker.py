"""The worker side of the inference pool: what runs in each ``spawn``-ed worker process.

A worker loads every served model once at start (verifying its sha256 through the store before
unpickling), says :class:`~serving.execution.messages.Ready`, then answers the messages of
serving.execution.messages in order until told to stop or its parent is gone. Only this module
and what it imports are loaded in the worker; the parent side is serving.execution.pool.
"""

from __future__ import annotations

import os
from multiprocessing.connection import Connection

from serving.execution.lifeline import bind_to_parent
from serving.execution.messages import (
    Answer,
    Batch,
    ControlReply,
    Failure,
    Load,
    ModelKey,
    Ready,
    ToWorker,
    Unload,
)
from serving.execution.runtime import ExplanationUnavailable, LoadedModel, RuntimePolicy, load
from serving.execution.shared_arrays import REGION, Inbox, Outbox
from serving.store import ModelStore


def run(
    conn: Connection,
    store_root: str,
    keys: list[ModelKey],
    signing_key: bytes | None,
    policy: RuntimePolicy,
    parent: int,
) -> None:
    """Entry point of a worker process: load models, then serve batches until told to stop."""
    bind_to_parent(parent)
    _configure(policy)
    store = ModelStore(store_root, signing_key=signing_key)
    models: dict[ModelKey, LoadedModel] = {}
    failed: dict[ModelKey, str] = {}
    for key in keys:
        try:
            models[key] = _load_warm(store, key, policy)
        except Exception as exc:
            failed[key] = f"{type(exc).__name__}: {exc}"
    runtimes = {key: model.runtime for key, model in models.items()}
    labels = {key: model.labels for key, model in models.items()}
    conn.send(Ready(os.getpid(), failed, runtimes, labels))
    inbox, outbox = Inbox(), Outbox(conn)
    while True:
        try:
            message: ToWorker = conn.recv()
            # Batches first: they are nearly every message.
            if isinstance(message, Batch):
                conn.send(_predict(message, models, inbox, outbox))
            elif message is None:
                return
            elif isinstance(message, (Load, Unload)):
                conn.send(_control(message, models, store, policy))
            elif message[0] == REGION:
                inbox.attach(conn, message[1])
        except (EOFError, OSError):
            return  # the parent is gone


def _configure(policy: RuntimePolicy) -> None:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    # The same thread budget as ONNX Runtime's sessions get (see serving.execution.runtime): numpy's
    # BLAS would otherwise start a thread per core in every worker. scikit-learn is set up
    # only when a version needs it (runtime.use_sklearn).
    threadpool_limits(policy.onnx_threads)


def _predict(
    batch: Batch, models: dict[ModelKey, LoadedModel], inbox: Inbox, outbox: Outbox
) -> Answer | Failure:
    """Run one batch (its values are label positions in the model's ``labels`` when the
    answer says ``indexed``)."""
    try:
        # A view of the shared region: valid until the parent writes again, which it does
        # only after this reply.
        rows = inbox.unpack(batch.rows, copy=False)
        model = models[batch.key]
        values, probabilities, indexed = model.predict_coded(rows, batch.want_probabilities)
        explained = None
        if batch.explain:
            contributions = model.explain(rows)
            explained = (contributions.base, contributions.values)
    except ExplanationUnavailable as exc:
        return Failure(batch.task_id, str(exc), unexplained=True)
    except Exception as exc:
        return Failure(batch.task_id, f"{type(exc).__name__}: {exc}")
    values, probabilities = outbox.pack(values, probabilities)
    return Answer(batch.task_id, values, probabilities, indexed, explained)


def _load_warm(store: ModelStore, key: ModelKey, policy: RuntimePolicy) -> LoadedModel:
    # runtime.load predicts one row: a model that cannot is a load failure, never served.
    return load(store, *key, policy)


def _control(
    message: Load | Unload,
    models: dict[ModelKey, LoadedModel],
    store: ModelStore,
    policy: RuntimePolicy,
) -> ControlReply:
    """Load or unload one model in a running worker; a loaded one's reply carries its
    runtime and what its label positions stand for, a failed load's why not."""
    if isinstance(message, Unload):
        models.pop(message.key, None)
        return ControlReply(message.task_id, True, None, {})
    key = message.key
    try:
        models[key] = _load_warm(store, key, policy)
    except Exception as exc:
        return ControlReply(message.task_id, False, f"{type(exc).__name__}: {exc}", {})
    return ControlReply(message.task_id, True, models[key].runtime, {key: models[key].labels})
