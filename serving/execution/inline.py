"""Inline inference: batches run in one thread of the server process.

No worker processes, so nothing to start or stop, but sklearn's Python overhead then shares
the GIL with the event loop. Kept as a setting for small deployments and debugging.

scikit-learn is imported only when a batch runs on it, as in a pool worker: an executor whose
versions all run on ONNX Runtime never imports it (the import took about a second on the first
batch, which every request then waited for, and about 100 MB).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from serving.core.errors import NotReadyError
from serving.execution.executor import ExecutorStatus, ModelKey, Opened, failure_error
from serving.execution.runtime import (
    ExplanationUnavailable,
    FloatArray,
    LoadedModel,
    Prediction,
    RuntimeName,
)


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
    """Runs batches on a single thread with models loaded in this process."""

    size = 1

    def __init__(
        self,
        models: dict[ModelKey, LoadedModel],
        loader: Callable[[ModelKey], LoadedModel] | None = None,
    ) -> None:
        self._models = models
        self._loader = loader
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="servewell-inline")
        self._closed = False

    @property
    def up(self) -> bool:
        return not self._closed

    def submit(
        self, key: ModelKey, rows: FloatArray, want_probabilities: bool, explain: bool = False
    ) -> asyncio.Future[Prediction]:
        """Run one batch in the thread; the future resolves in the event loop."""
        if self._closed:
            raise NotReadyError("the inline executor is shut down")
        loop = asyncio.get_running_loop()
        model = self._models[key]
        future: asyncio.Future[Prediction] = loop.create_future()

        def run() -> None:
            try:
                if model.runtime == "sklearn":
                    _configure_sklearn()
                result = model.predict(rows, want_probabilities, explain)
            except ExplanationUnavailable as exc:
                loop.call_soon_threadsafe(_fail, future, failure_error(str(exc), True))
            except Exception as exc:
                error = failure_error(f"{type(exc).__name__}: {exc}", False)
                loop.call_soon_threadsafe(_fail, future, error)
            else:
                loop.call_soon_threadsafe(_resolve, future, result)

        self._threads.submit(run)
        return future

    async def load_model(self, key: ModelKey) -> RuntimeName:
        """Load a model (hot swap); errors propagate with their reason."""
        if self._closed or self._loader is None:
            raise NotReadyError("the inline executor cannot load models")
        model = await asyncio.to_thread(self._loader, key)
        self._models[key] = model
        return model.runtime

    async def unload_model(self, key: ModelKey) -> None:
        """Forget a model; batches already submitted hold their own reference."""
        self._models.pop(key, None)

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
        self._threads.shutdown(wait=True, cancel_futures=True)


def _resolve(future: asyncio.Future[Prediction], result: Prediction) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Prediction], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
