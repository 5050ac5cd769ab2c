"""Shadow predictions: requests production has answered, sent to the shadow version together.

Each shadowed request only appends to a list; every :data:`FLUSH_S` the list goes to the shadow
version's batcher as one array, with one future and one done callback for all of it, which then
compares the answers with production's and captures them request by request. A shadow's latency
does not matter to anyone, so it is spent where it saves the event loop work: a future, a
callback and a batcher entry per request cost the loop about as much as the shadow itself.
Nothing here can reach the client: errors are counted (and logged once per experiment).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from serving.core.errors import ServingError
from serving.execution.runtime import FloatArray, Prediction

if TYPE_CHECKING:
    from serving.capture.capture import Capture
    from serving.core.registry import ServedModel
    from serving.core.routing import Route

log = logging.getLogger("servewell.rollout")

FLUSH_S = 0.002
"""How long shadowed requests gather before they are sent (one array per flush)."""


@dataclass(frozen=True, slots=True)
class Shadowed:
    """One answered request waiting for its shadow prediction."""

    rows: FloatArray
    production: Prediction
    request_id: str
    transport: str
    keep: bool
    """Captured (capture drew it when production's answer was kept)."""
    queued: float
    """``time.perf_counter()`` when production had answered."""


Lookup = Callable[[], "tuple[ServedModel | None, int, Capture | None]"]
"""The shadow version as served now (None: not served), its queue bound, and capture."""


class ShadowQueue:
    """The shadowed requests of one experiment, and their trip to the shadow version."""

    def __init__(self, route: Route, lookup: Lookup | None) -> None:
        self.route = route
        self.lookup = lookup
        """Set by the lifecycle, which knows the registry, settings and capture; None (only
        in tests of the route's arithmetic): nothing is shadowed."""
        self.waiting: list[Shadowed] = []
        self.want_probabilities = False
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, item: Shadowed, want_probabilities: bool) -> None:
        if self.lookup is None:
            return
        self.waiting.append(item)
        self.want_probabilities |= want_probabilities
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(FLUSH_S, self.flush, self.lookup)

    def flush(self, lookup: Lookup) -> None:
        """Send what waits to the shadow version's batcher as one array."""
        self._timer = None
        items, self.waiting = self.waiting, []
        want, self.want_probabilities = self.want_probabilities, False
        stats = self.route.shadow_stats
        shadow, bound, capture = lookup()
        count = sum(len(item.rows) for item in items)
        if shadow is None or shadow.retired:
            stats.skipped += len(items)
            return
        queued = shadow.batcher.queued_rows
        if queued and queued + count > bound:
            stats.skipped += len(items)  # a slow shadow falls behind; production does not
            return
        stats.requests += len(items)
        rows = items[0].rows if len(items) == 1 else np.concatenate([i.rows for i in items])
        future = shadow.batcher.submit(rows, want)
        future.add_done_callback(partial(self._done, shadow, items, capture))

    def _done(
        self,
        shadow: ServedModel,
        items: list[Shadowed],
        capture: Capture | None,
        future: asyncio.Future[Prediction],
    ) -> None:
        now = time.perf_counter()
        route = self.route
        stats = route.stats[shadow.manifest.version]
        failure = None if future.cancelled() else future.exception()
        if future.cancelled() or failure is not None:
            for item in items:
                stats.done(now - item.queued, ok=False)
            route.shadow_stats.errors += len(items)
            if route.shadow_stats.errors == len(items):  # the first: the figures count the rest
                detail = "cancelled" if failure is None else _describe(failure)
                log.warning("shadow %s v%s failed (%s)", route.name, route.shadow, detail)
            return
        prediction = future.result()
        production = [item.production.predictions for item in items]
        route.shadow_stats.add(
            production[0] if len(items) == 1 else np.concatenate(production),
            prediction.predictions,
        )
        start = 0
        for item in items:
            stats.done(now - item.queued, ok=True)
            end = start + len(item.rows)
            if item.keep and capture is not None:
                probabilities = prediction.probabilities
                capture.put(
                    shadow.manifest,
                    item.request_id,
                    now - item.queued,
                    item.transport,
                    item.rows,
                    Prediction(
                        prediction.predictions[start:end],
                        None if probabilities is None else probabilities[start:end],
                    ),
                    shadow.class_keys,
                )
            start = end


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
