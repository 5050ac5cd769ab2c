"""Inline inference: batches run in one thread of the server process.

No worker processes, so nothing to start or stop. ONNX Runtime computes without holding the
GIL, so this is the default when every production version runs on it
(:mod:`serving.execution.factory`); scikit-learn's Python would share the GIL with the event
loop, so versions on it get the pool unless inline is asked for.

scikit-learn is imported only when a batch runs on it, as in a pool worker: an executor whose
versions all run on ONNX Runtime never imports it (the import took about a second on the first
batch, which every request then waited for, and about 100 MB).

A small batch of a cheap model runs in the event loop itself: for it, handing the batch to the
thread and its result back (a queue, a wake-up of the thread, the GIL changing hands twice, a
wake-up of the loop) costs more than the model. A model is cheap when :data:`LOOP_ROWS` rows
take at most :data:`LOOP_BUDGET_S`, timed when it is loaded.

Explained batches run in a thread of their own, so a prediction never waits behind one: an
explanation holds shap's C code for about a millisecond a row, and the first one in a process
imports scikit-learn and shap and builds the explainer, 2 to 3 s in which every batch too large
for the loop would wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.core.errors import NotReadyError
from serving.execution.executor import ExecutorStatus, ModelKey, Opened, failure_error
from serving.execution.runtime import (
    ExplanationUnavailable,
    FloatArray,
    LoadedModel,
    Prediction,
    RuntimeName,
    typical_row,
)

log = logging.getLogger("servewell")

LOOP_ROWS = 32
"""Batches of at most this many rows of a cheap model run in the event loop."""
LOOP_BUDGET_S = 200e-6
"""A model is cheap when a batch of :data:`LOOP_ROWS` rows takes at most this long: about what
the loop spends on one single-row request, so a batch run in it delays others by as little."""


def batch_seconds(model: LoadedModel) -> float:
    """How long ``model`` takes for :data:`LOOP_ROWS` typical rows: the fastest of five calls
    after one untimed (a busy box only adds to a call's time, as at start, when every server
    process loads at once). Infinite when such a batch fails (it then runs in the thread, whose
    errors are the callers' as ever; a model loads whether or not this works)."""
    rows = np.repeat(typical_row(model.manifest), LOOP_ROWS, axis=0)
    seconds = []
    try:
        for _ in range(6):
            started = time.perf_counter()
            model.predict(rows, False)
            seconds.append(time.perf_counter() - started)
    except Exception:
        return math.inf
    return min(seconds[1:])


class _SklearnThread(threading.local):
    configured = False


_THREAD = _SklearnThread()


def _configure_sklearn() -> None:
    """Configure scikit-learn in this thread (its settings are per thread), once."""
    if not _THREAD.configured:
        import sklearn

        sklearn.set_config(assume_finite=True)  # finiteness is checked at the edge
        _THREAD.configured = True


class InlineExecutor:
    """Runs batches with models loaded in this process: on a single thread, or small ones of a
    cheap model in the event loop."""

    size = 1

    def __init__(
        self,
        models: dict[ModelKey, LoadedModel],
        loader: Callable[[ModelKey], LoadedModel] | None = None,
    ) -> None:
        self._models = models
        self._loader = loader
        self._cheap: set[ModelKey] = set()
        """Models whose small batches run in the event loop."""
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="servewell-inline")
        self._explaining = ThreadPoolExecutor(1, thread_name_prefix="servewell-explain")
        """Explained batches (its thread starts with the first)."""
        self._closed = False

    @property
    def up(self) -> bool:
        return not self._closed

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool, explain: bool = False
    ) -> asyncio.Future[Prediction]:
        """Run one batch, in the event loop when it is small and its model cheap, else in the
        inference thread (explained: the explaining thread); the future resolves in the event
        loop."""
        if self._closed:
            raise NotReadyError("the inline executor is shut down")
        loop = asyncio.get_running_loop()
        model = self._models[key]
        future: asyncio.Future[Prediction] = loop.create_future()
        if key in self._cheap and len(rows) <= LOOP_ROWS and not explain:
            _settle(future, *_predict(model, rows, want_probabilities, explain))
            return future

        def run() -> None:
            outcome = _predict(model, rows, want_probabilities, explain)
            loop.call_soon_threadsafe(_settle, future, *outcome)

        (self._explaining if explain else self._threads).submit(run)
        return future

    async def load_model(self, key: ModelKey) -> RuntimeName:
        """Load a model (hot swap); errors propagate with their reason."""
        if self._closed or self._loader is None:
            raise NotReadyError("the inline executor cannot load models")
        loader = self._loader
        model, seconds = await asyncio.to_thread(lambda: (m := loader(key), batch_seconds(m)))
        self._models[key] = model
        if seconds <= LOOP_BUDGET_S:
            self._cheap.add(key)
        else:
            self._cheap.discard(key)
        timed = f"{seconds * 1e6:.0f} µs" if math.isfinite(seconds) else "failed"
        where = (
            f"batches of up to {LOOP_ROWS} rows run in the event loop"
            if key in self._cheap
            else "its batches run in the inference thread"
        )
        log.info("%s v%s: %d rows: %s; %s", *key, LOOP_ROWS, timed, where)
        return model.runtime

    async def unload_model(self, key: ModelKey) -> None:
        """Forget a model; batches already submitted hold their own reference."""
        self._models.pop(key, None)
        self._cheap.discard(key)

    async def open(self, keys: Sequence[ModelKey]) -> Opened:
        """Load ``keys`` in this process (those not given loaded already)."""
        opened = Opened({}, {})
        for key in keys:
            try:
                runtime = await self.load_model(key)
            except Exception as exc:
                opened.failed[key] = f"{type(exc).__name__}: {exc}"
            else:
                opened.runtimes[key] = runtime
        return opened

    def status(self) -> ExecutorStatus:
        up = int(self.up)
        return ExecutorStatus(
            up=self.up, size=1, workers=up, workers_ready=up, replacing=0, restarts=None
        )

    def close(self) -> None:
        self._closed = True
        both = (self._threads, self._explaining)
        for threads in both:  # neither takes a new batch while the other finishes its own
            threads.shutdown(wait=False, cancel_futures=True)
        for threads in both:
            threads.shutdown(wait=True)


def _predict(
    model: LoadedModel, rows: FloatArray, want_probabilities: bool, explain: bool
) -> tuple[Prediction | None, Exception | None]:
    """The batch's prediction, or the error its callers get."""
    try:
        if model.runtime == "sklearn":
            _configure_sklearn()
        return model.predict(rows, want_probabilities, explain), None
    except ExplanationUnavailable as exc:
        return None, failure_error(str(exc), True)
    except Exception as exc:
        return None, failure_error(f"{type(exc).__name__}: {exc}", False)


def _settle(
    future: asyncio.Future[Prediction], result: Prediction | None, error: Exception | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
