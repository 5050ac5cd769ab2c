"""Snapshot files shared by server processes: atomic writes, others' files read, own skipped."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from serving.observe.metrics import Metrics
from serving.observe.snapshots import SnapshotDir, SnapshotWriter


def test_others_skip_this_process_and_files_that_are_not_snapshots(tmp_path: Path) -> None:
    shared = SnapshotDir(tmp_path)
    shared.write({"mine": {"kind": "counter", "samples": []}})
    other = {"pid": os.getppid(), "families": {"theirs": {"kind": "counter", "samples": []}}}
    (tmp_path / f"{os.getppid()}.json").write_bytes(orjson.dumps(other))
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "12345678.json").write_text("{half a file")
    assert list(shared.others()) == [(True, other["families"])]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_the_writer_writes_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a box booted a minute ago: the monotonic clock is far below the interval.
    monkeypatch.setattr("serving.observe.snapshots.time.monotonic", lambda: 60.0)
    metrics = Metrics()
    writer = SnapshotWriter(metrics, SnapshotDir(tmp_path), interval=3600.0)
    own = tmp_path / f"{os.getpid()}.json"
    writer.tick()
    assert orjson.loads(own.read_bytes())["families"].keys() == {f.name for f in metrics.families}
    own.unlink()
    writer.tick()
    assert not own.exists()
