"""The worker side of the inference pool: what runs in each ``spawn``-ed worker process.

A worker loads every served model once at start (verifying its sha256 through the store before
unpickling), says :class:`~serving.execution.messages.Ready`, then answers the messages of
serving.execution.messages in order until told to stop or its parent is gone. Only this module
and what it imports are loaded in the worker; the parent side is serving.execution.pool.

Explained batches are the exception to that order: the worker hands each to a thread of its
own and goes on reading, so a prediction never waits behind an explanation. A worker's first
explanation imports shap and builds the explainer, 2 to 3 s in which a pool of one would
otherwise hold every prediction of its server process. The thread answers when it is done,
with its arrays pickled: the shared region belongs to the batches in order (explained batches
are small, at most ``max_explain_rows`` rows).
"""

from __future__ import annotations

import os
import queue
import threading
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
from serving.execution.runtime import (
    ExplanationUnavailable,
    FloatArray,
    LoadedModel,
    RuntimePolicy,
    load,
)
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
    sending = threading.Lock()  # the explaining thread writes to the pipe too
    explaining = _Explaining(conn, sending)
    while True:
        try:
            message: ToWorker = conn.recv()
            # Batches first: they are nearly every message.
            if isinstance(message, Batch) and not message.explain:
                # A view of the shared region: valid until the parent writes again, which it
                # does only after this reply.
                outcome = _predict(
                    message, models.get(message.key), inbox.unpack(message.rows, copy=False)
                )
                with sending:  # packing may announce a new region: a write to the pipe
                    conn.send(_packed(outcome, outbox))
            elif isinstance(message, Batch):
                # Copied: the parent may write the region again as soon as this is read. The
                # model is looked up now, as an unload read after this message must not touch it.
                rows = inbox.unpack(message.rows, copy=True)
                explaining.put(message, models.get(message.key), rows)
            elif message is None:
                return
            elif isinstance(message, (Load, Unload)):
                reply = _control(message, models, store, policy)
                with sending:
                    conn.send(reply)
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


class _Explaining:
    """The thread that runs explained batches, started with the first one."""

    def __init__(self, conn: Connection, sending: threading.Lock) -> None:
        self._conn = conn
        self._sending = sending
        self._batches: queue.SimpleQueue[tuple[Batch, LoadedModel | None, FloatArray]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def put(self, batch: Batch, model: LoadedModel | None, rows: FloatArray) -> None:
        if self._thread is None:
            # A daemon: a worker told to stop exits without waiting for an explanation.
            self._thread = threading.Thread(target=self._run, name="servewell-explain", daemon=True)
            self._thread.start()
        self._batches.put((batch, model, rows))

    def _run(self) -> None:
        while True:
            batch, model, rows = self._batches.get()
            outcome = _predict(batch, model, rows)
            try:
                with self._sending:
                    self._conn.send(outcome)
            except (OSError, ValueError):
                return  # the parent is gone; the main thread sees it too


def _predict(batch: Batch, model: LoadedModel | None, rows: FloatArray) -> Answer | Failure:
    """Run one batch on ``model`` (None: the worker does not hold the batch's model); its
    values are label positions in the model's ``labels`` when the answer says ``indexed``."""
    try:
        if model is None:
            raise KeyError(batch.key)
        values, probabilities, indexed = model.predict_coded(rows, batch.want_probabilities)
        explained = None
        if batch.explain:
            contributions = model.explain(rows)
            explained = (contributions.base, contributions.values)
    except ExplanationUnavailable as exc:
        return Failure(batch.task_id, str(exc), unexplained=True)
    except Exception as exc:
        return Failure(batch.task_id, f"{type(exc).__name__}: {exc}")
    return Answer(batch.task_id, values, probabilities, indexed, explained)


def _packed(outcome: Answer | Failure, outbox: Outbox) -> Answer | Failure:
    """An answer with its large arrays in the shared region."""
    if isinstance(outcome, Failure):
        return outcome
    values, probabilities = outbox.pack(outcome.values, outcome.probabilities)
    return outcome._replace(values=values, probabilities=probabilities)


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
