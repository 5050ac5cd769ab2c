"""Slow load tests (``make test-slow``): a 60 s soak at 1000 connections, and overload.

Load comes from wrk (``bench/wrk.py``) against the real ``python -m serving`` on 127.0.0.1,
always for a bounded duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from bench import bodies as bench_bodies
from bench import wrk
from serving.settings import Settings
from serving.store import ModelStore
from tests.serving.conftest import IRIS_ROW
from tests.serving.process import descendants
from tests.serving.process import start_serving as _start

pytestmark = pytest.mark.slow

PREDICT = "/models/iris/predict"
JSON = {"content-type": "application/json"}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _bodies(tmp_path: Path, name: str, rows: int, count: int = 20) -> Path:
    body = json.dumps({"rows": [IRIS_ROW] * rows}).encode()
    return bench_bodies.write(tmp_path / f"{name}.rec", [(body, 0)] * count)


def _wrk_in_thread(
    url: str, bodies: Path, connections: int, seconds: float, out: list[wrk.Result]
) -> threading.Thread:
    binary = wrk.find()
    assert binary, wrk.INSTALL_HINT

    def go() -> None:
        out.append(wrk.run(binary, url + PREDICT, bodies, connections, seconds, 30, threads=2))

    thread = threading.Thread(target=go)
    thread.start()
    return thread


@pytest.mark.timeout(600)  # a 60 s soak after a server start and a warm-up, on a busy box
def test_soak_60s_at_1000_connections_mixed_sizes(
    trained_store: ModelStore, tmp_path: Path
) -> None:
    if not wrk.find():
        pytest.skip(wrk.INSTALL_HINT)
    process, url = _start(trained_store, pool_size="1")
    try:
        single = _bodies(tmp_path, "single", 1)
        bulk = _bodies(tmp_path, "bulk", 1000)
        # Warm-up: the same mix for 20 s (buffers and allocator pools reach their size), then
        # the RSS baseline.
        warm: list[wrk.Result] = []
        threads = [
            _wrk_in_thread(url, single, 950, 20, warm),
            _wrk_in_thread(url, bulk, 50, 20, warm),
        ]
        for thread in threads:
            thread.join(120)
        # The processes as they run now (a worker the watchdog replaced during the warm-up on a
        # starved box is a new process); one that goes away from here on fails the soak.
        processes = {process.pid, *descendants(process.pid)}
        baseline = {pid: _rss_kib(pid) for pid in processes}
        runs: list[wrk.Result] = []
        threads = [
            _wrk_in_thread(url, single, 950, 60, runs),
            _wrk_in_thread(url, bulk, 50, 60, runs),
        ]
        for thread in threads:
            thread.join(180)
        gone = [pid for pid in processes if not Path(f"/proc/{pid}").exists()]
        assert not gone, f"processes {gone} of the server exited during the soak"
        after = {pid: _rss_kib(pid) for pid in processes}
        assert len(runs) == 2
        for run in runs:
            assert run.requests > 0
            assert run.errors == 0, run
        growth = {pid: (after[pid] - baseline[pid]) / baseline[pid] for pid in processes}
        report = {
            "requests": [r.requests for r in runs],
            "p99_ms": [r.p99_ms for r in runs],
            "rss_kib_before": baseline,
            "rss_kib_after": after,
        }
        print(json.dumps(report))
        assert all(g < 0.10 for g in growth.values()), report
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0


async def _closed_loop(url: str, body: bytes, clients: int, seconds: float) -> int:
    """Requests completed by ``clients`` sending back to back for ``seconds``."""
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        stop = asyncio.get_running_loop().time() + seconds

        async def one() -> None:
            nonlocal done
            while asyncio.get_running_loop().time() < stop:
                response = await client.post(PREDICT, content=body, headers=JSON)
                assert response.status_code == 200, response.text
                done += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return done


async def _raw_post(port: int, request: bytes) -> int:
    """One request on its own connection, with nothing but asyncio streams: the client must
    cost far less than the server, or it measures itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


async def _open_loop(
    url: str, body: bytes, rate: float, seconds: float
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Send ``rate`` requests per second for ``seconds`` whatever happens to earlier ones (as
    independent users do); return (status, latency s) per request and per readiness probe."""
    port = int(url.rsplit(":", 1)[1])
    request = (
        f"POST {PREDICT} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    probe_request = b"GET /health/ready HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    results: list[tuple[int, float]] = []
    ready: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    async def one() -> None:
        started = loop.time()
        status = await _raw_post(port, request)
        results.append((status, loop.time() - started))

    async def probe() -> None:
        started = loop.time()
        status = await _raw_post(port, probe_request)
        ready.append((status, loop.time() - started))

    tasks = []
    start = loop.time()
    sent = 0
    while (now := loop.time()) < start + seconds:
        due = int((now - start) * rate) + 1
        while sent < due:
            tasks.append(asyncio.ensure_future(one()))
            sent += 1
            if sent % 50 == 0:
                tasks.append(asyncio.ensure_future(probe()))
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return results, ready


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


OVERLOAD_ROWS = 8000
"""Rows per request of the overload test. Each request opens a new connection from a Python
client on the same 2-core box, so the client's cost and the cost of each refusal grow with the
request rate, not with the rows: the test must offer few, big requests or it measures the box.
With 1 000 rows the service sustained 920 to 1 070 requests/s there and at three times that
every request stalled for seconds, the probes alike (5 of 8 runs failed). With 4 000 rows
(sustaining 530 to 830) goodput was 40 to 73 % of the sustainable rate, 50 % being the bound.
With 8 000 rows (sustaining 440 to 520) 74 to 92 % in three runs; before the shedder counted the
rows of bodies still arriving, 0.9 %, with readiness probes waiting 0.64 s (p50)."""


def test_at_three_times_the_sustainable_load_accepted_requests_keep_their_deadline(
    trained_store: ModelStore,
) -> None:
    deadline_s = 2.0
    process, url = _start(
        trained_store,
        pool_size="1",
        request_timeout_s=str(deadline_s),
        max_queue_rows=str(5 * OVERLOAD_ROWS),  # 5 requests waiting
        # The in-flight body budget as shipped: sized not to shed an unsaturated box, it
        # must still protect this one.
    )
    body = json.dumps({"rows": [IRIS_ROW] * OVERLOAD_ROWS}).encode()
    try:
        # Sustainable load: what 4 back-to-back clients complete (all answered 200).
        seconds = 10.0
        sustainable = asyncio.run(_closed_loop(url, body, 4, seconds)) / seconds
        rss_before = _rss_kib(process.pid)
        results, ready = asyncio.run(_open_loop(url, body, 3 * sustainable, 20.0))
        rss_after = _rss_kib(process.pid)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
    statuses = [status for status, _ in results]
    accepted = [latency for status, latency in results if status == 200]
    shed = [latency for status, latency in results if status == 503]
    report = {
        "sustainable_rps": sustainable,
        "offered_rps": 3 * sustainable,
        "counts": {s: statuses.count(s) for s in set(statuses)},
        "accepted_p50_s": _p(accepted, 0.5) if accepted else None,
        "accepted_p99_s": _p(accepted, 0.99) if accepted else None,
        "shed_p50_s": _p(shed, 0.5) if shed else None,
        "shed_p99_s": _p(shed, 0.99) if shed else None,
        # The floor: a request that does no work at all, on a new connection like the others.
        "probe_p50_s": _p([s for _, s in ready], 0.5) if ready else None,
        "probe_p99_s": _p([s for _, s in ready], 0.99) if ready else None,
        "rss_kib_before_after": [rss_before, rss_after],
    }
    print(json.dumps(report))
    assert set(statuses) <= {200, 503, 504}, report
    assert shed, report  # overload was reached and shed
    assert len(accepted) >= 0.5 * sustainable * 20, report  # goodput held up
    assert statuses.count(504) <= 0.05 * len(statuses), report  # shed early, not timed out
    assert _p(accepted, 0.99) <= deadline_s, report
    assert {status for status, _ in ready} == {200}, report  # it stayed ready throughout
    # Shedding is fast: a shed request costs no more than one that does no work at all (the
    # readiness probe, on a new connection like every request here, in the same run) and a
    # small part of the deadline. (Faster than that floor cannot be: accepting a connection
    # and parsing its headers is the same loop work for every request.)
    probe = [latency for _, latency in ready]
    assert _p(shed, 0.5) <= 1.5 * _p(probe, 0.5) + 0.01, report
    assert _p(shed, 0.99) <= 1.5 * _p(probe, 0.99) + 0.02, report
    # Within a small part of the deadline: the p95, as the p99 follows the floor's own tail,
    # which on this shared box reached 0.6 s once (probe and shed alike) in a run like this.
    assert _p(shed, 0.95) <= deadline_s / 4, report
    # Memory stays bounded: by design up to the in-flight body budget of declared bytes may be
    # held at once (the faster the service, the more requests are in flight at three times its
    # rate: 22 to 58 MB more here), plus room for their parsed rows and the buffers.
    budget_kib = (Settings().max_inflight_body_bytes or 0) // 1024
    assert rss_after - rss_before <= budget_kib + 32 * 1024, report
