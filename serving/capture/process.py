"""The capture writer's process: captured requests become database rows away from the server.

Turning a request into rows (inputs back to names, JSON text) and binding them to the driver is
Python work that holds the GIL; on a thread of the server process it ran between the event
loop's own steps, and every microsecond of it per row cost the loop more than a microsecond
(the GIL changing hands, caches). So the writer thread only packs what it takes from the queue
column by column (one array of inputs per model version, a list of request ids, ...: a few
numpy concatenations per batch, no per-row Python work) and sends it through a pipe to this
process, which writes it in one transaction and answers. The thread waits for the answer with
the GIL released, so :class:`serving.capture.writer.CaptureWriter` keeps its meaning: a batch
is written when the sink returns, dropped when it raises.

A writer process that dies is started again on the next batch (at most once per
``RESTART_INTERVAL_S``; batches in between are dropped and counted like any write failure).
It dies with the server (serving.execution.lifeline) and ignores Ctrl-C: the server decides
when it stops, after the queue is flushed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.capture.database import ensure_schema, open_engine
from serving.capture.policy import CapturePolicy
from serving.capture.records import Captured
from serving.capture.store import CaptureStore
from serving.execution.lifeline import bind_to_parent
from serving.execution.runtime import FloatArray, Prediction
from serving.store import Manifest

log = logging.getLogger("servewell.capture")

RESTART_INTERVAL_S = 5.0
"""Least time between two starts of the writer process."""

NICENESS = 10
"""Added to the writer process's nice value (lower CPU priority than the server's)."""

Key = tuple[str, int]


class CaptureWriteError(Exception):
    """The writer process could not write a batch (its message says why), or is gone."""


@dataclass(frozen=True, slots=True)
class Written:
    """The writer process's answer to a batch."""

    ok: bool
    error: str = ""
    """Why the batch was not written; with ``ok``: why retention failed, if it did."""
    pruned: int = 0
    """Rows removed by retention after this batch."""


@dataclass(frozen=True, slots=True)
class Packed:
    """The requests of one model version in one batch, column by column."""

    key: Key
    request_ids: list[str]
    counts: list[int]
    ts: list[float]
    latency_ms: list[float]
    transports: list[str]
    rows: FloatArray
    predictions: npt.NDArray[Any]
    probabilities: FloatArray | None
    class_keys: Sequence[str]


def pack(batch: Sequence[Captured]) -> tuple[list[Packed], dict[Key, Manifest]]:
    """``batch`` by model version (and whether probabilities were computed), with the
    manifests it names."""
    groups: dict[tuple[str, int, bool], list[Captured]] = {}
    manifests: dict[Key, Manifest] = {}
    for record in batch:
        m = record.manifest
        group = (m.name, m.version, record.prediction.probabilities is not None)
        found = groups.get(group)
        if found is None:
            groups[group] = found = []
            manifests[m.name, m.version] = m
        found.append(record)
    packed = []
    for (name, version, with_probabilities), records in groups.items():
        packed.append(
            Packed(
                (name, version),
                [r.request_id for r in records],
                [len(r.rows) for r in records],
                [r.ts for r in records],
                [r.latency_ms for r in records],
                [r.transport for r in records],
                np.concatenate([r.rows for r in records]),
                np.concatenate([r.prediction.predictions for r in records]),
                np.concatenate([r.prediction.probabilities for r in records])
                if with_probabilities
                else None,
                records[0].class_keys,
            )
        )
    return packed, manifests


def unpack(packed: Sequence[Packed], manifests: dict[Key, Manifest]) -> list[Captured]:
    """The :class:`Captured` records :func:`pack` was given, their arrays now slices."""
    records = []
    for group in packed:
        manifest = manifests[group.key]
        start = 0
        probabilities = group.probabilities
        for i, count in enumerate(group.counts):
            end = start + count
            prediction = Prediction(
                group.predictions[start:end],
                None if probabilities is None else probabilities[start:end],
            )
            records.append(
                Captured(
                    manifest,
                    group.request_ids[i],
                    group.ts[i],
                    group.latency_ms[i],
                    group.transports[i],
                    group.rows[start:end],
                    prediction,
                    group.class_keys,
                )
            )
            start = end
    return records


class WriterProcess:
    """A :data:`serving.capture.writer.Sink` that writes in a process of its own; called by
    the writer thread only."""

    def __init__(self, url: str, policy: CapturePolicy) -> None:
        self.url = url
        self.policy = policy
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._known: set[Key] = set()
        """Manifests the running process has been sent (each is sent once)."""
        self._started = -float("inf")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run,
            args=(child_end, self.url, self.policy, os.getpid()),
            name="servewell-capture",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._process, self._conn, self._known = process, parent_end, set()
        self._started = time.monotonic()

    def __call__(self, batch: Sequence[Captured]) -> None:
        if self._conn is None:
            if time.monotonic() - self._started < RESTART_INTERVAL_S:
                raise CaptureWriteError("the writer process is restarting")
            self.start()
        conn = self._conn
        assert conn is not None
        packed, manifests = pack(batch)
        new = {key: m for key, m in manifests.items() if key not in self._known}
        try:
            conn.send((packed, new))
            reply: Written = conn.recv()
        except (EOFError, OSError) as exc:
            self._lost()
            raise CaptureWriteError(f"the writer process is gone ({exc!r})") from None
        self._known.update(new)
        if not reply.ok:
            raise CaptureWriteError(reply.error)
        if reply.error:
            log.error("capture: retention failed (%s)", reply.error)
        if reply.pruned:
            log.info("capture: retention removed %d rows", reply.pruned)

    def close(self, timeout_s: float) -> None:
        """Stop the process (what it is writing is finished first, within ``timeout_s``)."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
        if self._process is not None:
            self._process.join(timeout_s)
        self._lost()

    def _lost(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


# -- the writer process ----------------------------------------------------------------------


def run(conn: Connection, url: str, policy: CapturePolicy, parent: int) -> None:
    """Entry point of the writer process: write each batch received, answer, until told to
    stop or the server is gone."""
    bind_to_parent(parent)
    # Capture is the server's background work: when the cores are contended, predictions go
    # first. The writer keeps up whenever the box is not saturated; when it is, the bounded
    # queue drops rows (counted) instead of the service slowing down.
    os.nice(NICENESS)
    engine = open_engine(url)
    store = CaptureStore(engine)
    manifests: dict[Key, Manifest] = {}
    schema_ready = False
    next_prune = time.monotonic() + policy.prune_interval_s
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the server is gone
        if message is None:
            engine.dispose()
            return
        packed, new = message
        manifests.update(new)
        try:
            if not schema_ready:  # the database may come after the server
                ensure_schema(engine)
                schema_ready = True
            store.write(unpack(packed, manifests))
        except Exception as exc:  # told to the server, which drops the batch and logs
            conn.send(Written(False, f"{type(exc).__name__}: {exc}"))
            continue
        done = Written(True)
        if time.monotonic() >= next_prune:
            next_prune = time.monotonic() + policy.prune_interval_s
            done = prune(store, policy)
        conn.send(done)


def prune(store: CaptureStore, policy: CapturePolicy) -> Written:
    """Apply retention to every model in the database."""
    older_than = None if policy.max_age_s is None else time.time() - policy.max_age_s
    pruned, errors = 0, []
    for name in store.models():
        try:
            pruned += store.prune(name, older_than=older_than, keep_rows=policy.max_rows_per_model)
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return Written(True, "; ".join(errors), pruned)
