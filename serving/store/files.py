"""Reading and writing files of the store safely: never through a symbolic link, only regular
files, pointer files replaced atomically. Nothing here knows the artifact contract."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from serving.store.errors import IntegrityError, StoreError

_READ_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in place of a file must not hang the reader.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def atomic_write_text(path: Path, text: str) -> None:
    # Created with os.open and mode 0o666 so the umask applies as for any other file (mkstemp
    # makes 0600: a service running as another user could not read the pointer).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink (OSError ELOOP/ENOTDIR for one)."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})
"""What ``open`` with ``O_NOFOLLOW`` (or ``O_DIRECTORY``) says of a symbolic link, or of a file
where a folder should be."""


@contextlib.contextmanager
def refusing_links(refusal: Exception) -> Iterator[None]:
    """Raise ``refusal`` for a symbolic link met by the opens in the block; every other error
    (a missing file among them) passes through."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise refusal from None
        raise


def read_regular(fd: int, what: str) -> bytes:
    """Every byte of an opened file, which must be a regular file."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise IntegrityError(f"{what} is not a regular file")
    chunks = []
    while chunk := os.read(fd, _READ_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def read_under(dir_fd: int, rel: str, what: str, folder: Path) -> bytes:
    """Read ``rel`` (a relative POSIX path) below an open directory, following no symlink at
    any step, so what is read is what lies inside the directory, whatever is swapped later."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise IntegrityError(f"{what}: manifest lists {rel!r} outside its version")
    opened: list[int] = []
    link = IntegrityError(
        f"{what}: {folder / rel} is (or lies below) a symbolic link; the store never follows one"
    )
    try:
        with refusing_links(link):
            current = dir_fd
            for part in parts[:-1]:
                current = open_dir(part, current)
                opened.append(current)
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=current)
        try:
            return read_regular(fd, f"{what}: {folder / rel}")
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: artifact file {folder / rel} is missing") from None
    finally:
        for fd in opened:
            os.close(fd)


def read_file_nofollow(path: Path) -> bytes:
    """A file of a model folder, read without following a symlink at the folder or the file;
    FileNotFoundError when absent."""
    with refusing_links(StoreError(f"{path} is a symbolic link; the store never follows one")):
        dir_fd = open_dir(path.parent)
        try:
            fd = os.open(path.name, FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    try:
        return read_regular(fd, str(path))
    finally:
        os.close(fd)
