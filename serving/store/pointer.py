"""A model's production pointer and its rollback history, and the lock both change under.

Each function takes the model's folder (from :func:`serving.store.layout.model_dir`, so already
validated): the pointer is ``<folder>/production``, the history ``<folder>/history.json``.
Readers never follow a symlink; writers replace either file with ``os.replace`` (atomic on
POSIX) while holding ``<folder>/pointer.lock``, so a promote or rollback in the service and one
from the CLI never lose each other's history entries. A change of production also ends the
model's traffic experiment (:mod:`serving.store.traffic`), which was set against the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from serving.store import traffic
from serving.store.errors import StoreError
from serving.store.files import atomic_write_text, read_file_nofollow, refusing_links
from serving.store.layout import HISTORY_FILE, LOCK_FILE, PRODUCTION_FILE, parse_version


def production(folder: Path) -> int | None:
    """The version the production pointer names, or None when nothing is promoted."""
    pointer = folder / PRODUCTION_FILE
    try:
        raw = read_file_nofollow(pointer)
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", "replace").strip(" \t\r\n")
    version = parse_version(text)
    if version is None:
        raise StoreError(f"production pointer {pointer} is corrupt: {raw[:40]!r}")
    return version


def history(folder: Path) -> list[int]:
    """Earlier production versions, oldest first (the rollback stack)."""
    path = folder / HISTORY_FILE
    try:
        raw = read_file_nofollow(path)
    except FileNotFoundError:
        return []
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not JSON ({exc})"
    else:
        if isinstance(data, list) and all(type(v) is int and v >= 1 for v in data):
            return list(data)
        problem = "not a list of version numbers"
    raise StoreError(
        f"the rollback history {path} is corrupt: {problem}; fix it, or delete it to "
        "forget the earlier production versions"
    )


@contextlib.contextmanager
def pointer_lock(folder: Path) -> Iterator[None]:
    """Hold the model's pointer lock: promote and rollback read, change and write the
    production pointer and the history under it, in the service and the CLI alike."""
    path = folder / LOCK_FILE
    with refusing_links(StoreError(f"{path} is a symbolic link; the store never follows one")):
        # Read-only is enough for flock, so any user who can read the store can lock.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def promote(folder: Path, version: int) -> int | None:
    """Point production at ``version`` (verified by the caller); return the previous one."""
    with pointer_lock(folder):
        previous = production(folder)
        if previous == version:
            return previous
        if previous is not None:
            earlier = history(folder)
            earlier.append(previous)
            atomic_write_text(folder / HISTORY_FILE, json.dumps(earlier) + "\n")
        atomic_write_text(folder / PRODUCTION_FILE, f"{version}\n")
        traffic.remove(folder)
    return previous


def rollback(
    folder: Path, name: str, published: set[int], verify: Callable[[int], object]
) -> tuple[int, int]:
    """Return production to the last earlier version still published, after ``verify``
    accepts it; returns (from_version, to_version)."""
    with pointer_lock(folder):
        current = production(folder)
        earlier = history(folder)
        while earlier and (earlier[-1] not in published or earlier[-1] == current):
            earlier.pop()
        if current is None or not earlier:
            raise StoreError(f"model {name!r} has no earlier production version to roll back to")
        target = earlier.pop()
        verify(target)
        atomic_write_text(folder / PRODUCTION_FILE, f"{target}\n")
        atomic_write_text(folder / HISTORY_FILE, json.dumps(earlier) + "\n")
        traffic.remove(folder)
    return current, target


def previous_production(folder: Path, published: set[int]) -> int | None:
    """The published version a rollback would return to, or None."""
    current = production(folder)
    earlier = [v for v in history(folder) if v in published and v != current]
    return earlier[-1] if earlier else None
