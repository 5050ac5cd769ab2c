"""Slow load tests (``make test-slow``): a 60 s soak at 1000 connections, and overload.

Load comes from wrk (``bench/wrk.py``) against the real ``python -m serving`` on 127.0.0.1,
always for a bounded duration.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from bench import wrk
from serving.store import ModelStore
from tests.serving.test_main import _children, _start

pytestmark = pytest.mark.slow

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _bodies(tmp_path: Path, name: str, rows: int, count: int = 20) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"rows": [IRIS_ROW] * rows}) + "\n" for _ in range(count)))
    return path


def _wrk_in_thread(
    url: str, bodies: Path, connections: int, seconds: float, out: list[wrk.WrkRun]
) -> threading.Thread:
    binary = wrk.find_wrk()
    assert binary, wrk.INSTALL_HINT

    def go() -> None:
        out.append(
            wrk.run(
                binary,
                url,
                "/models/iris/predict",
                bodies,
                connections=connections,
                threads=2,
                duration_s=seconds,
                timeout_s=30,
            )
        )

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_soak_60s_at_1000_connections_mixed_sizes(
    trained_store: ModelStore, tmp_path: Path
) -> None:
    if not wrk.find_wrk():
        pytest.skip(wrk.INSTALL_HINT)
    process, url = _start(trained_store, pool_size="1")
    try:
        processes = {process.pid, *_children(process.pid)}
        single = _bodies(tmp_path, "single", 1)
        bulk = _bodies(tmp_path, "bulk", 1000)
        # Warm-up: the same mix for 20 s (buffers and allocator pools reach their size), then
        # the RSS baseline.
        warm: list[wrk.WrkRun] = []
        threads = [
            _wrk_in_thread(url, single, 950, 20, warm),
            _wrk_in_thread(url, bulk, 50, 20, warm),
        ]
        for thread in threads:
            thread.join(120)
        baseline = {pid: _rss_kib(pid) for pid in processes}
        runs: list[wrk.WrkRun] = []
        threads = [
            _wrk_in_thread(url, single, 950, 60, runs),
            _wrk_in_thread(url, bulk, 50, 60, runs),
        ]
        for thread in threads:
            thread.join(180)
        after = {pid: _rss_kib(pid) for pid in processes}
        assert len(runs) == 2
        for run in runs:
            assert run.result.requests > 0
            assert run.result.errors.total == 0, run.result.errors
        growth = {pid: (after[pid] - baseline[pid]) / baseline[pid] for pid in processes}
        report = {
            "requests": [r.result.requests for r in runs],
            "p99_ms": [r.result.latency.p99 for r in runs],
            "rss_kib_before": baseline,
            "rss_kib_after": after,
        }
        print(json.dumps(report))
        assert all(g < 0.10 for g in growth.values()), report
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
    assert process.returncode == 0
