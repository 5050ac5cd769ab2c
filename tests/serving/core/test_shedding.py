"""The shedding decision made before a body is read: byte budget and queue forecast."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import numpy as np
import pytest

from serving.core.admission import admit
from serving.core.batcher import MicroBatcher, Slots
from serving.core.errors import OverloadedError
from serving.core.shedding import Shedder
from serving.execution.runtime import FloatArray, Prediction
from serving.settings import Settings
from tests.serving.conftest import IRIS_ROW


class _Held:
    """An executor whose batches never finish: what is queued stays queued."""

    def run(self, rows: FloatArray, want: bool) -> asyncio.Future[Prediction]:
        return asyncio.get_running_loop().create_future()


def _with_batcher(test: Callable[[MicroBatcher], None]) -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(_Held().run, Slots(1), max_rows=10_000, max_delay=0.0)
        batcher.submit(np.zeros((1, 4)), False)  # takes the only slot: later rows wait
        test(batcher)

    asyncio.run(scenario())


def _body(rows: int) -> int:
    return len(json.dumps({"rows": [IRIS_ROW] * rows}).encode())


def test_the_byte_budget_sheds_beyond_it_but_a_lone_request_always_enters() -> None:
    shedder = Shedder(max_inflight_bytes=100, max_queue_rows=10, retry_after_s=2.0)
    alone = shedder.admit(500, None)  # over the budget, but nothing else in flight
    with pytest.raises(OverloadedError) as caught:
        shedder.admit(1, None)
    assert caught.value.retry_after == 2.0
    alone.release()
    assert shedder.inflight_bytes == 0
    first = shedder.admit(60, None)
    second = shedder.admit(40, None)  # exactly at the budget
    with pytest.raises(OverloadedError):
        shedder.admit(1, None)
    assert shedder.shed_on_bytes == 2
    first.release()
    second.release()
    assert shedder.inflight_bytes == 0


def test_bytes_arriving_beyond_those_declared_count_against_the_budget() -> None:
    shedder = Shedder(max_inflight_bytes=100, max_queue_rows=10, retry_after_s=2.0)
    alone = shedder.admit(0, None)  # a chunked body declares nothing
    alone.arrived(80)
    alone.arrived(150)  # beyond the budget, but alone: it goes on
    assert shedder.inflight_bytes == 150
    alone.release()
    first = shedder.admit(0, None)
    first.arrived(60)
    second = shedder.admit(0, None)
    second.arrived(40)  # exactly at the budget
    with pytest.raises(OverloadedError) as caught:
        second.arrived(41)
    assert caught.value.retry_after == 2.0
    assert shedder.shed_on_bytes == 1
    assert shedder.inflight_bytes == 101  # counted until the request ends
    first.release()
    second.release()
    assert shedder.inflight_bytes == 0


def test_no_budget_means_no_byte_shedding() -> None:
    shedder = Shedder(max_inflight_bytes=None, max_queue_rows=10, retry_after_s=1.0)
    tickets = [shedder.admit(10**9, None) for _ in range(3)]
    assert shedder.inflight_bytes == 3 * 10**9
    for ticket in tickets:
        ticket.release()


def test_an_empty_queue_admits_anything() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=10, retry_after_s=1.0)
        assert batcher.queued_rows == 0
        shedder.admit(10**6, batcher).release()

    _with_batcher(check)


def test_before_learning_a_queue_sheds_only_when_full() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=10, retry_after_s=1.0)
        batcher.submit(np.zeros((9, 4)), False)
        shedder.admit(10**6, batcher).release()  # rows unknown: taken as 1, 9 + 1 fits
        batcher.submit(np.zeros((1, 4)), False)
        with pytest.raises(OverloadedError, match="10 rows waiting, about 0 more arriving, limit"):
            shedder.admit(10, batcher)
        assert shedder.shed_on_queue == 1

    _with_batcher(check)


def test_learned_bytes_per_row_shed_what_admission_would_refuse_before_parsing() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=1000, retry_after_s=1.0)
        learn = shedder.admit(_body(100), batcher)
        learn.queued(100)
        learn.release()
        batcher.submit(np.zeros((600, 4)), False)
        shedder.admit(_body(400), batcher).release()  # 600 + 400 fits
        with pytest.raises(OverloadedError):
            shedder.admit(_body(410), batcher)  # estimated at a little under 410 rows
        with pytest.raises(OverloadedError):
            admit(batcher, 410, 1000, 1.0)  # as admission after parsing would decide

    _with_batcher(check)


def test_the_estimate_errs_low_so_the_edge_never_sheds_what_admission_takes() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=1000, retry_after_s=1.0)
        # Mixed formats: compact bulk rows and wordier small bodies. The ratio kept is the
        # highest, so a compact body's rows are underestimated, never overestimated.
        for rows in (1, 1000, 3, 1000):
            ticket = shedder.admit(_body(rows), batcher)
            ticket.queued(rows)
            ticket.release()
        batcher.submit(np.zeros((100, 4)), False)
        shed = 0
        for rows in range(1, 2000, 7):
            try:
                shedder.admit(_body(rows), batcher).release()
            except OverloadedError:
                shed += 1
                with pytest.raises(OverloadedError):
                    admit(batcher, rows, 1000, 1.0)
        assert 0 < shed < len(range(1, 2000, 7))

    _with_batcher(check)


def test_a_change_of_format_is_learned_as_the_old_ratio_decays() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=1000, retry_after_s=1.0)
        wordy = shedder.admit(10_000, batcher)  # 100 bytes per row
        wordy.queued(100)
        for _ in range(500):  # then only 20 bytes per row
            ticket = shedder.admit(20_000, batcher)
            ticket.queued(1000)
            ticket.release()
        wordy.release()
        batcher.submit(np.zeros((500, 4)), False)
        with pytest.raises(OverloadedError):
            shedder.admit(20 * 600, batcher)  # 600 rows at the current ratio

    _with_batcher(check)


def test_rows_still_arriving_count_until_queued_or_released() -> None:
    """Bodies admitted but not yet parsed fill the queue as much as rows waiting in it: a
    flood of big bodies is shed at the headers, not after each was read and parsed."""

    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=1000, retry_after_s=1.0)
        learn = shedder.admit(_body(100), batcher)
        learn.queued(100)
        learn.release()
        assert batcher.queued_rows == 0  # the slot's batch runs, nothing waits
        first = shedder.admit(_body(400), batcher)  # alone: admitted whatever its size
        second = shedder.admit(_body(400), batcher)  # about 800 rows arriving: fits
        with pytest.raises(OverloadedError, match=r"about 7\d\d more arriving, limit 1000"):
            shedder.admit(_body(400), batcher)
        assert shedder.shed_on_queue == 1
        second.release()  # refused after parsing (or failed): its rows leave
        third = shedder.admit(_body(400), batcher)
        admit(batcher, 400, 1000, 1.0, first)  # queued: counted by the queue, not twice
        batcher.submit(np.zeros((400, 4)), False)
        assert batcher.queued_rows == 400
        with pytest.raises(OverloadedError, match=r"400 rows waiting, about 3\d\d more arriving"):
            shedder.admit(_body(400), batcher)
        first.release()
        third.release()
        shedder.admit(_body(400), batcher).release()  # 400 waiting + about 400 fits
        assert all(load.arriving_rows == 0 for _, load in shedder._loads.values())

    _with_batcher(check)


def test_admission_tells_the_request_s_ticket_its_rows() -> None:
    def check(batcher: MicroBatcher) -> None:
        shedder = Shedder(None, max_queue_rows=1000, retry_after_s=1.0)
        ticket = shedder.admit(_body(50), batcher)
        admit(batcher, 50, 1000, 1.0, ticket)
        ticket.release()
        batcher.submit(np.zeros((900, 4)), False)
        with pytest.raises(OverloadedError):
            shedder.admit(_body(200), batcher)  # learned: about 200 rows, 900 + 200 > 1000

    _with_batcher(check)


def test_the_default_budget_admits_eight_clients_of_ten_thousand_30_feature_rows() -> None:
    """Eight clients each sending 10 000 rows of 30 features do not saturate a 2-core box (one
    such body is ~2.4 MB of JSON): the default budget must not shed them."""
    budget = Settings().max_inflight_body_bytes
    body = len(json.dumps({"rows": [[123.456] * 30] * 10_000}).encode())
    shedder = Shedder(max_inflight_bytes=budget, max_queue_rows=100_000, retry_after_s=1.0)
    tickets = [shedder.admit(body, None) for _ in range(8)]
    assert shedder.shed_on_bytes == 0
    for ticket in tickets:
        ticket.release()
