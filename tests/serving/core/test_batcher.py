"""The micro-batcher with a hand-driven executor: when batches are cut and sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from serving.core.batcher import MicroBatcher, Slots
from serving.execution.runtime import FloatArray, Prediction


class Executor:
    """Records every batch; the test decides when each one finishes."""

    def __init__(self) -> None:
        self.batches: list[tuple[FloatArray, bool, asyncio.Future[Prediction]]] = []

    def run(self, rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self.batches.append((rows, want, future))
        return future

    def finish(self, index: int) -> None:
        rows, want, future = self.batches[index]
        future.set_result(Prediction(rows[:, 0] * 10, rows if want else None))

    def sizes(self) -> list[int]:
        return [len(rows) for rows, _, _ in self.batches]


def rows(*values: float) -> FloatArray:
    return np.array([[v, v] for v in values], dtype=np.float64)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_a_lone_request_is_sent_at_once() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=100, max_delay=60.0)
        future = batcher.submit(rows(1, 2), False)
        assert executor.sizes() == [2]  # no waiting for more rows: the pool was idle
        executor.finish(0)
        result = await future
        assert result.predictions.tolist() == [10, 20]

    run(scenario)


def test_batches_are_cut_by_rows_without_splitting_requests() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=5, max_delay=0.0)
        first = batcher.submit(rows(1), False)
        waiting = [batcher.submit(rows(*range(n)), False) for n in (3, 2, 2, 4)]
        assert executor.sizes() == [1]  # the only slot is busy
        executor.finish(0)
        await first
        assert executor.sizes() == [1, 5]  # 3 + 2 rows; the next 2 would overflow
        executor.finish(1)
        await asyncio.gather(*waiting[:2])
        assert executor.sizes() == [1, 5, 2]  # 2 + 4 > 5
        executor.finish(2)
        await waiting[2]
        assert executor.sizes() == [1, 5, 2, 4]
        executor.finish(3)
        await waiting[3]

    run(scenario)


def test_results_go_back_to_their_requests_in_order() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=1000, max_delay=0.0)
        blocker = batcher.submit(rows(0), False)
        futures = [batcher.submit(rows(i, i + 0.5), i % 2 == 0) for i in range(1, 50)]
        executor.finish(0)
        await blocker
        assert executor.sizes() == [1, 98]
        _, want, _ = executor.batches[1]
        assert want  # probabilities computed if any request asked
        executor.finish(1)
        for i, future in enumerate(futures, start=1):
            result = await future
            assert result.predictions.tolist() == [i * 10, (i + 0.5) * 10]
            assert result.probabilities is not None
            assert result.probabilities[:, 0].tolist() == [i, i + 0.5]

    run(scenario)


def test_waits_at_most_max_delay_while_the_pool_is_busy() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(2), max_rows=100, max_delay=0.05)
        batcher.submit(rows(1), False)  # occupies one of two slots
        second = batcher.submit(rows(2), False)
        third = batcher.submit(rows(3), False)
        assert executor.sizes() == [1]  # a slot is free, but more rows may come
        await asyncio.sleep(0.02)
        assert executor.sizes() == [1]
        await asyncio.sleep(0.2)
        assert executor.sizes() == [1, 2]  # sent after max_delay
        executor.finish(1)
        assert (await second).predictions.tolist() == [20]
        assert (await third).predictions.tolist() == [30]

    run(scenario)


def test_a_full_batch_does_not_wait_and_several_are_in_flight() -> None:
    async def scenario() -> None:
        executor = Executor()
        slots = Slots(3)
        batcher = MicroBatcher(executor.run, slots, max_rows=4, max_delay=60.0)
        batcher.submit(rows(1), False)
        batcher.submit(rows(1, 2, 3, 4), False)  # full: sent though the pool is not idle
        batcher.submit(rows(5, 6), False)
        batcher.submit(rows(7, 8), False)  # 4 rows pending now: full again
        assert executor.sizes() == [1, 4, 4]
        assert slots.in_use == 3
        batcher.submit(rows(9), False)
        assert executor.sizes() == [1, 4, 4]  # no slot left
        executor.finish(0)
        await asyncio.sleep(0)
        assert executor.sizes() == [1, 4, 4, 1]  # sent the moment a slot freed up
        for i in range(1, 4):
            executor.finish(i)
        await asyncio.sleep(0)
        assert slots.in_use == 0

    run(scenario)


def test_slots_are_shared_between_batchers() -> None:
    async def scenario() -> None:
        executor = Executor()
        slots = Slots(1)
        a = MicroBatcher(executor.run, slots, max_rows=10, max_delay=0.0)
        b = MicroBatcher(executor.run, slots, max_rows=10, max_delay=0.0)
        a.submit(rows(1), False)
        later = b.submit(rows(2), False)
        assert executor.sizes() == [1]
        executor.finish(0)
        await asyncio.sleep(0)
        assert executor.sizes() == [1, 1]
        executor.finish(1)
        assert (await later).predictions.tolist() == [20]

    run(scenario)


def test_a_failed_batch_fails_only_its_own_requests() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=1, max_delay=0.0)
        first = batcher.submit(rows(1), False)
        second = batcher.submit(rows(2), False)
        executor.batches[0][2].set_exception(RuntimeError("boom"))
        with pytest.raises(RuntimeError, match="boom"):
            await first
        executor.finish(1)
        assert (await second).predictions.tolist() == [20]

    run(scenario)


def test_a_cancelled_request_does_not_break_its_batch() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=10, max_delay=0.0)
        blocker = batcher.submit(rows(0), False)
        gone = batcher.submit(rows(1), False)
        kept = batcher.submit(rows(2), False)
        executor.finish(0)
        await blocker
        gone.cancel()
        executor.finish(1)
        assert (await kept).predictions.tolist() == [20]

    run(scenario)


def test_drain_waits_for_queued_and_in_flight_batches() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=100, max_delay=60.0)
        first = batcher.submit(rows(1), False)
        queued = batcher.submit(rows(2), False)  # waits for the only slot
        assert not batcher.idle
        drained = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0)
        executor.finish(0)
        await first
        await asyncio.sleep(0)
        assert not drained.done()  # the queued request went out and is in flight
        assert batcher.in_flight == 1
        executor.finish(1)
        await queued
        await asyncio.wait_for(drained, 1)
        assert batcher.idle

    run(scenario)


def test_a_cancelled_request_is_withdrawn_before_it_is_sent() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=100, max_delay=0.0)
        first = batcher.submit(rows(1), False)  # takes the only slot
        gone = batcher.submit(rows(2, 3), False)
        kept = batcher.submit(rows(4), False)
        assert batcher.queued_rows == 3
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.queued_rows == 1
        assert batcher.withdrawn == 1
        executor.finish(0)
        await first
        assert executor.sizes() == [1, 1]  # the withdrawn rows never reached the executor
        executor.finish(1)
        assert (await kept).predictions.tolist() == [40]
        assert batcher.idle

    run(scenario)


def test_a_batcher_with_only_withdrawn_requests_is_idle() -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=100, max_delay=0.0)
        first = batcher.submit(rows(1), False)
        gone = batcher.submit(rows(2), False)
        gone.cancel()
        await asyncio.sleep(0)
        executor.finish(0)
        await first
        await asyncio.wait_for(batcher.drain(), 5)
        assert batcher.idle
        assert executor.sizes() == [1]

    run(scenario)


class FlagNegatives:
    """An observer that flags rows holding a negative value (as drift tracking flags rows
    outside the training range) and records what it was shown."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.done = 0
        self.shown: list[list[float]] = []

    def batch_sent(self, rows: FloatArray, waits: list[float]) -> list[int]:
        self.sent.append((len(rows), len(waits)))
        flagged: list[int] = np.flatnonzero((rows < 0).any(axis=1)).tolist()
        return flagged

    def batch_done(self, seconds: float) -> None:
        self.done += 1

    def warnings(self, rows: FloatArray) -> tuple[str, ...]:
        self.shown.append(rows[:, 0].tolist())
        return tuple(f"{v:g} is negative" for v in rows[:, 0] if v < 0)


def test_flagged_rows_warn_only_the_requests_they_came_in() -> None:
    async def scenario() -> None:
        executor = Executor()
        observer = FlagNegatives()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=1000, max_delay=0.0)
        batcher.observer = observer
        first = batcher.submit(rows(1), False)
        later = [batcher.submit(r, False) for r in (rows(1, 2), rows(3, -4, -5), rows(6))]
        last = batcher.submit(rows(-7), False)
        executor.finish(0)
        await first
        assert executor.sizes() == [1, 7]  # the four waiting requests in one batch
        executor.finish(1)
        results = await asyncio.gather(*later, last)
        assert [r.warnings for r in results] == [
            (),
            ("-4 is negative", "-5 is negative"),
            (),
            ("-7 is negative",),
        ]
        assert [r.predictions.tolist() for r in results][1] == [30, -40, -50]
        assert observer.sent == [(1, 1), (7, 4)]
        assert observer.shown == [[-4, -5], [-7]]  # a request's flagged rows, not all of them
        assert observer.done == 2
        assert (await first).warnings == ()

    run(scenario)


class Broken(FlagNegatives):
    """An observer that fails at every call."""

    def batch_sent(self, rows: FloatArray, waits: list[float]) -> list[int]:
        super().batch_sent(rows, waits)
        raise RuntimeError("observer bug")

    def batch_done(self, seconds: float) -> None:
        raise RuntimeError("observer bug")


class BrokenWarnings(FlagNegatives):
    def warnings(self, rows: FloatArray) -> tuple[str, ...]:
        raise RuntimeError("observer bug")


@pytest.mark.parametrize("observer", [Broken(), BrokenWarnings()], ids=["sent", "warnings"])
def test_a_failing_observer_costs_no_prediction(observer: FlagNegatives) -> None:
    async def scenario() -> None:
        executor = Executor()
        batcher = MicroBatcher(executor.run, Slots(1), max_rows=1000, max_delay=0.0)
        batcher.observer = observer
        for values in ((1.0, -2.0), (3.0,)):  # one slot: the second waits for the first
            future = batcher.submit(rows(*values), False)
            executor.finish(len(executor.batches) - 1)
            result = await future
            assert result.predictions.tolist() == [10 * v for v in values]
            assert result.warnings == ()
        assert batcher.idle

    run(scenario)
