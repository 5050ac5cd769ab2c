"""The event loop kept polling after the last request in flight, on a real asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import time
from pathlib import Path

import httpx

from serving.core.idle_poll import IdlePoll
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW
from tests.serving.process import descendants, start_serving


class Counting(IdlePoll):
    """Counts the loop iterations it polled through."""

    iterations = 0

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s)
        self.past_50 = asyncio.Event()

    def _poll(self) -> None:
        self.iterations += 1
        if self.iterations > 50:
            self.past_50.set()
        super()._poll()


def _polling(poll: IdlePoll) -> bool:
    return poll.polling  # read afresh: the loop changes it between two asserts


def _two_close_requests(poll: IdlePoll) -> None:
    poll.begin()
    poll.end()
    poll.begin()  # right behind the first: the gap is far within any window
    poll.end()


async def _quiet_after(poll: IdlePoll, seconds: float) -> bool:
    """Whether the poll has stopped ``seconds`` from now."""
    await asyncio.sleep(seconds)
    return not poll.polling


def test_the_first_request_does_not_poll() -> None:
    async def run() -> None:
        poll = IdlePoll(1.0)
        poll.begin()
        poll.end()
        assert not _polling(poll)
        assert poll.polled == 0

    asyncio.run(run())


def test_after_a_close_request_the_loop_polls_for_the_window_then_sleeps() -> None:
    async def run() -> None:
        poll = Counting(0.3)
        _two_close_requests(poll)
        assert _polling(poll)
        assert poll.polled == 1
        # Without the poll the loop would sleep in one wait: one iteration. With it, many,
        # however slowly a busy box gives the loop its turns (waited for within the window).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poll.past_50.wait(), 0.25)
        assert poll.iterations > 50
        assert await _quiet_after(poll, 0.5)
        quiet = poll.iterations
        await asyncio.sleep(0.05)
        assert poll.iterations == quiet

    asyncio.run(run())


def test_a_request_arriving_stops_the_poll_and_its_end_starts_it_again() -> None:
    async def run() -> None:
        poll = Counting(5.0)
        _two_close_requests(poll)
        assert _polling(poll)
        await asyncio.sleep(0)  # the next request comes in a later loop iteration
        poll.begin()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not _polling(poll)  # a request in flight is waited for asleep
        busy = poll.iterations
        await asyncio.sleep(0.05)
        assert poll.iterations == busy
        poll.end()
        assert _polling(poll)
        assert poll.polled == 2
        poll.begin()  # ends the poll for the rest of the test
        assert await _quiet_after(poll, 0.05)

    asyncio.run(run())


def test_requests_far_apart_never_poll() -> None:
    async def run() -> None:
        poll = IdlePoll(0.01)
        poll.begin()
        poll.end()
        await asyncio.sleep(0.05)
        poll.begin()
        poll.end()
        assert not _polling(poll)
        assert poll.polled == 0

    asyncio.run(run())


def test_requests_that_overlapped_do_not_poll_and_the_next_sequential_ones_do() -> None:
    async def run() -> None:
        poll = IdlePoll(1.0)
        _two_close_requests(poll)
        poll.begin()  # stops the poll at the next iteration
        poll.begin()  # two in flight: concurrent load, not a sequential client
        poll.end()
        assert poll.active == 1
        await asyncio.sleep(0)
        assert not _polling(poll)
        poll.end()
        assert not _polling(poll)
        assert poll.polled == 1
        _two_close_requests(poll)  # one at a time again
        assert _polling(poll)
        assert poll.polled == 2
        poll.begin()
        assert await _quiet_after(poll, 0.05)

    asyncio.run(run())


def test_requests_of_other_connections_do_not_poll_and_stop_a_poll() -> None:
    """Single rows answered in the loop never overlap: the connections tell concurrent load."""

    async def run() -> None:
        poll = IdlePoll(1.0)
        for source in ("a", "b", "c", "a"):
            await asyncio.sleep(0)
            poll.begin(source)
            poll.end()
            assert not _polling(poll)
        await asyncio.sleep(0)
        poll.begin("a")  # the same connection again: a sequential client
        poll.end()
        assert _polling(poll)
        await asyncio.sleep(0)
        poll.begin("b")
        poll.end()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not _polling(poll)  # stopped at its next iteration
        assert poll.polled == 1

    asyncio.run(run())


def test_a_request_ready_in_the_same_loop_iteration_as_the_end_does_not_poll() -> None:
    async def run() -> None:
        poll = Counting(5.0)
        _two_close_requests(poll)
        assert _polling(poll)
        poll.begin()  # no poll iteration since the end: it was waiting already
        poll.end()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not _polling(poll)
        assert poll.polled == 1

    asyncio.run(run())


def test_a_zero_window_never_polls() -> None:
    async def run() -> None:
        poll = IdlePoll(0)
        _two_close_requests(poll)
        _two_close_requests(poll)
        assert not _polling(poll)
        assert poll.polled == 0

    asyncio.run(run())


def _cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and its live descendants."""
    total = 0
    for p in {pid} | descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _polled_seconds(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("servewell_idle_poll_seconds_total "):
            return float(line.split()[1])
    raise AssertionError("no servewell_idle_poll_seconds_total in /metrics")


def test_the_server_polls_between_a_clients_back_to_back_requests_then_goes_quiet(
    trained_store: ModelStore,
) -> None:
    process, url = start_serving(trained_store)
    try:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"rows": [IRIS_ROW]})
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(300):  # each request sent as soon as the answer is in
            connection.request(
                "POST", "/models/iris/predict", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200
            response.read()
        connection.close()
        polled = _polled_seconds(httpx.get(f"{url}/metrics", timeout=30).text)
        assert polled > 0
        time.sleep(0.5)
        before = _cpu_seconds(process.pid)
        time.sleep(2)
        # Nothing keeps polling once requests stop (a background tick or two only).
        assert _cpu_seconds(process.pid) - before < 0.2
        assert _polled_seconds(httpx.get(f"{url}/metrics", timeout=30).text) < polled + 0.01
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
