import resource
from pathlib import Path

import pytest

from bench import servers
from serving.store import ModelStore


def test_free_port_is_bindable() -> None:
    assert 0 < servers.free_port() < 65536


def test_open_files_limit_is_raised_up_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = servers.raise_open_files_limit(soft + 1)
        assert got == (soft + 1 if hard == resource.RLIM_INFINITY else min(soft + 1, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_baseline_starts_ready_and_stops_without_leftovers(
    store: ModelStore, tmp_path: Path
) -> None:
    spec = servers.baseline_spec("bare", store.root, ["iris"], backlog=128)
    server = servers.start(spec, tmp_path, ready_timeout_s=60)
    try:
        assert servers.is_ready(server.url)
        assert server.cpu_seconds() > 0
    finally:
        server.stop()
    assert server.process.returncode == 0  # SIGINT is a clean shutdown for uvicorn
    assert server.leftovers == []


def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    spec = servers.baseline_spec("bare", tmp_path / "empty-store", [], backlog=128)
    with pytest.raises(servers.ServerError, match="BENCH_MODELS"):
        servers.start(spec, tmp_path, ready_timeout_s=60)
