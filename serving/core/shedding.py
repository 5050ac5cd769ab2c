"""Load shedding decided before a prediction body is read.

Under overload the costly part of a refused request is not the refusal but what comes
before it: reading the body and parsing it (about 0.5 ms of event-loop time for 1000 iris
rows, several times that on a busy box). A request shed only once its rows are known has
already paid that, and the work shed requests do delays everything behind them in the
loop, the refusals included: shedding stops being fast exactly when it is needed. So the
edge asks :class:`Shedder` first, with nothing but the request's declared length and the
model it is for, and a request shed there costs the loop no more than its headers.

Two signals, each a few attribute reads per request:

* **In-flight body bytes** (``max_inflight_body_bytes``): body bytes of the prediction
  requests being handled now, declared (``Content-Length``) or, beyond that (a chunked body
  declares nothing), arrived (:meth:`Ticket.arrived`). Beyond the budget the loop is busy
  with bodies it has not queued yet (big bodies for several models, a flood of them), which
  the queues cannot see.
* **The model's queue** (``max_queue_rows``): rows waiting for the pool, plus those of the
  requests admitted here whose bodies are still being read or parsed, plus the rows this
  request will add. Rows are not known before parsing, so they are estimated from the
  declared length with the model's bytes per row, learned from the bodies admitted before
  (:meth:`Ticket.queued`). The estimate errs low on purpose (the highest ratio seen
  recently), so the edge sheds only what admission after parsing would refuse anyway;
  admission (:func:`serving.core.admission.admit`) stays the exact rule for the rest.

  The rows still arriving must count: under a flood of big bodies the queue itself stays
  short while every body is being read, so a rule that looked at the queue alone let them
  all in, and the loop then spent its time parsing bodies that admission refused once
  parsed. At three times the sustainable rate of 8 000-row iris requests (the overload
  test) that answered 0.9 % of the sustainable rate; counting them, 74 to 92 %.

One request alone is always admitted, as admission does with an empty queue.
"""

from __future__ import annotations

import weakref

from serving.core.batcher import MicroBatcher
from serving.core.errors import OverloadedError

_RATIO_DECAY = 0.99
"""Per admitted request, how much of the highest bytes-per-row ratio seen is kept: a change
of request format (records rather than rows) is learned within a few hundred requests."""


class _ModelLoad:
    """What the shedder learned about the bodies of one model version."""

    __slots__ = ("arriving_rows", "bytes_per_row")

    def __init__(self) -> None:
        self.bytes_per_row = 0.0
        """Highest recent body length per row (0: nothing learned yet)."""
        self.arriving_rows = 0
        """Estimated rows of the requests admitted and not queued yet (body being read or
        parsed)."""

    def rows_in(self, length: int) -> int:
        """A low estimate of the rows in a body of ``length`` bytes (at least 1)."""
        ratio = self.bytes_per_row
        return max(1, int(length / ratio)) if ratio else 1


class Ticket:
    """One admitted prediction request: its bytes count against the budget until
    :meth:`release`."""

    __slots__ = ("arriving", "length", "load", "shedder")

    def __init__(self, shedder: Shedder, length: int, load: _ModelLoad | None, rows: int) -> None:
        self.shedder = shedder
        self.length = length
        self.load = load
        self.arriving = rows
        """Its estimated rows while they count in ``load.arriving_rows``."""

    def queued(self, rows: int) -> None:
        """Its rows were parsed and admitted to the model's queue, where they now count:
        learn bytes per row."""
        load = self.load
        if load is None:
            return
        self._stop_arriving()
        if rows > 0 and self.length > 0:
            ratio = self.length / rows
            decayed = load.bytes_per_row * _RATIO_DECAY
            load.bytes_per_row = ratio if ratio > decayed else decayed

    def arrived(self, received: int) -> None:
        """``received`` body bytes have arrived, more than counted so far (a body sent
        chunked declares no length): they count against the budget, and beyond it, unless
        the request is alone, :class:`OverloadedError` (its bytes stay counted until
        :meth:`release`, as the request's do)."""
        shedder = self.shedder
        inflight = shedder.inflight_bytes + received - self.length
        shedder.inflight_bytes = inflight
        self.length = received
        budget = shedder.max_inflight_bytes
        if budget is not None and inflight > budget and inflight > received:
            shedder.shed_on_bytes += 1
            raise OverloadedError("the service is at capacity; retry later", shedder.retry_after_s)

    def release(self) -> None:
        """The request is answered: its bytes leave the budget, and its estimated rows the
        arriving count if they never reached the queue (refused or failed before)."""
        self.shedder.inflight_bytes -= self.length
        self.length = 0
        self._stop_arriving()

    def _stop_arriving(self) -> None:
        """Its estimated rows leave the model's arriving count (once)."""
        if self.arriving:
            assert self.load is not None  # rows are estimated only for a known model
            self.load.arriving_rows -= self.arriving
            self.arriving = 0


class Shedder:
    """The shedding decision of one event loop's edge; see the module docstring."""

    def __init__(
        self, max_inflight_bytes: int | None, max_queue_rows: int, retry_after_s: float
    ) -> None:
        self.max_inflight_bytes = max_inflight_bytes
        self.max_queue_rows = max_queue_rows
        self.retry_after_s = retry_after_s
        self.inflight_bytes = 0
        """Body bytes (declared, or arrived beyond that) of the prediction requests admitted
        and not answered yet."""
        self._loads: dict[int, tuple[weakref.ref[MicroBatcher], _ModelLoad]] = {}
        """By ``id`` of the model's batcher (a WeakKeyDictionary costs more per request)."""
        self.shed_on_bytes = 0
        self.shed_on_queue = 0
        """Requests shed so far, by reason (for tests and diagnostics)."""

    def admit(self, length: int, batcher: MicroBatcher | None) -> Ticket:
        """A ticket for a prediction request of ``length`` declared bytes bound for the
        model behind ``batcher`` (None: not known yet), or :class:`OverloadedError`."""
        inflight = self.inflight_bytes
        budget = self.max_inflight_bytes
        if budget is not None and inflight > 0 and inflight + length > budget:
            self.shed_on_bytes += 1
            raise OverloadedError("the service is at capacity; retry later", self.retry_after_s)
        load = None
        rows = 0
        if batcher is not None:
            known = self._loads.get(id(batcher))
            if known is None or known[0]() is not batcher:
                known = self._learn_about(batcher)
            load = known[1]
            queued = batcher.queued_rows
            arriving = load.arriving_rows
            rows = load.rows_in(length)
            if (queued or arriving) and queued + arriving + rows > self.max_queue_rows:
                self.shed_on_queue += 1
                raise OverloadedError(
                    f"the model's queue is full ({queued} rows waiting, about {arriving} more"
                    f" arriving, limit {self.max_queue_rows}); retry later",
                    self.retry_after_s,
                )
            load.arriving_rows = arriving + rows
        self.inflight_bytes = inflight + length
        return Ticket(self, length, load, rows)

    def _learn_about(self, batcher: MicroBatcher) -> tuple[weakref.ref[MicroBatcher], _ModelLoad]:
        key = id(batcher)
        loads = self._loads
        # A model version swapped out takes what was learned about it along.
        known = (weakref.ref(batcher, lambda _: loads.pop(key, None)), _ModelLoad())
        loads[key] = known
        return known
