"""Per-process metric snapshots in a directory shared by the server processes.

With several server processes (``SERVEWELL_WORKERS`` > 1) each one writes its counts as a JSON
file named by its pid, replaced atomically every second (:class:`SnapshotWriter`) and at every
scrape it answers; the process answering a scrape reads the others' (:meth:`SnapshotDir.others`)
and says whether each writer is still alive, since only live processes' gauges count.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from serving.observe.metrics import Metrics


class SnapshotDir:
    """Per-process snapshot files in a directory shared by the server processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()

    def write(self, snapshot: dict[str, Any]) -> None:
        data = orjson.dumps({"pid": self.pid, "families": snapshot})
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path / f"{self.pid}.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def others(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        """(alive, families) of every other process that wrote a snapshot."""
        for file in self.path.glob("*.json"):
            if not file.stem.isdigit() or int(file.stem) == self.pid:
                continue
            try:
                data = orjson.loads(file.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # replaced or removed meanwhile
            yield _alive(int(file.stem)), data["families"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotWriter:
    """Writes this process's snapshot to the shared directory every ``interval`` seconds."""

    def __init__(self, metrics: Metrics, shared: SnapshotDir, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.shared = shared
        self.interval = interval
        self.last: float | None = None
        """When it last wrote (None: never; the monotonic clock starts near zero at boot, so no
        number is safely "long ago")."""

    def tick(self) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            with contextlib.suppress(OSError):
                self.shared.write(self.metrics.snapshot())
