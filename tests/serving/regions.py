"""The shared-memory regions (serving.execution.shared_arrays) a process holds, for leak checks."""

from __future__ import annotations

import contextlib
import os


def shared_regions(pid: int | str = "self") -> set[tuple[int, int]]:
    """Each descriptor ``pid`` holds on a region (a live mapping keeps one), as (descriptor,
    inode): two mappings of one region are two.

    Tests compare sets taken before and after: the test process also runs other tests'
    servers, whose pools keep their own regions meanwhile."""
    regions = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            if os.readlink(path).startswith("/memfd:servewell-arrays"):
                regions.add((int(fd), os.stat(path).st_ino))
    return regions
