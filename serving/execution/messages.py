"""What the pool (serving.execution.pool) and its workers (serving.execution.worker) send.

Each worker has its own socketpair; every message is one of these records, pickled by
``Connection.send``. They are NamedTuples because one pickles nearly as cheaply as a plain tuple
(a dataclass costs more, and a batch crosses twice per request batch); a message that answers or
names a task carries its ``task_id`` first.

Parent to worker: :class:`Batch`, :class:`Load`, :class:`Unload`, and :data:`STOP`.
Worker to parent: :class:`Ready` once, then one :class:`Answer` or :class:`Failure` per batch and
one :class:`ControlReply` per load or unload, in the order of the messages they answer, except
for explained batches (``Batch.explain``): the worker's explaining thread answers those when
done, between the others.
Either way, ``("region", size)`` followed by a file descriptor announces a new shared region
(serving.execution.shared_arrays); arrays of a batch or an answer may then be
:class:`~serving.execution.shared_arrays.SharedArray` references into it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from serving.execution.executor import ModelKey as ModelKey  # re-exported for the workers
from serving.execution.runtime import RuntimeName

STOP = None
"""Tells a worker to exit (so does the parent's end of the pipe closing)."""
RegionNotice = tuple[str, int]
"""``(REGION, size)``, from serving.execution.shared_arrays; either side may send it."""


class Batch(NamedTuple):
    """Rows to predict with one model."""

    task_id: int
    key: ModelKey
    rows: Any
    """A float64 array, or where it is in the shared region."""
    want_probabilities: bool
    explain: bool = False
    """Also compute the rows' feature contributions."""


class Load(NamedTuple):
    """Load one more model into a running worker (hot swap)."""

    task_id: int
    key: ModelKey


class Unload(NamedTuple):
    """Drop a model from a running worker."""

    task_id: int
    key: ModelKey


Control = Load | Unload
ToWorker = Batch | Control | RegionNotice | None


class Ready(NamedTuple):
    """Sent once, when a worker has loaded its models."""

    pid: int
    failed: dict[ModelKey, str]
    """The models it could not load, with the reason."""
    runtimes: dict[ModelKey, RuntimeName]
    labels: dict[ModelKey, Any]
    """What a classifier's label positions stand for (one array per model)."""


class Answer(NamedTuple):
    """A batch's prediction."""

    task_id: int
    values: Any
    """Labels or numbers; label positions in the model's ``labels`` when ``indexed``."""
    probabilities: Any
    indexed: bool
    contributions: Any = None
    """``(base, values)`` arrays when the batch asked to explain (serving.execution.runtime's
    Contributions)."""


class Failure(NamedTuple):
    """A batch the model could not predict."""

    task_id: int
    reason: str
    unexplained: bool = False
    """The model predicted, but its explainer could not be built (not the batch's fault)."""


class ControlReply(NamedTuple):
    """The outcome of a :class:`Load` or :class:`Unload`."""

    task_id: int
    ok: bool
    payload: RuntimeName | str | None
    """The runtime a loaded model runs on, or why it could not be loaded."""
    labels: dict[ModelKey, Any]
    """For a loaded classifier, what its label positions stand for."""


FromWorker = Ready | Answer | Failure | ControlReply | RegionNotice
