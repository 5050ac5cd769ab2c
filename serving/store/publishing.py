"""Publishing a new version: staged in a hidden folder, then renamed into place whole.

A version is assembled in a hidden staging directory next to its final place and renamed into
place only when every file and the manifest are written, so readers never see a partial
version and a failed run leaves nothing behind. Training writes through
:meth:`serving.store.ModelStore.create_version`, which is :func:`staged_version`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.store.artifact import MODEL_FILE, REPORT_DIR, hash_files, write_manifest
from serving.store.layout import STAGING_PREFIX


class StagedVersion:
    """A version being written. Files go into :attr:`path`; :meth:`ModelStore.create_version`
    hashes them, writes the manifest and publishes the directory when the block exits cleanly."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.version: int | None = None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def report_dir(self) -> Path:
        path = self.path / REPORT_DIR
        path.mkdir(exist_ok=True)
        return path


@contextlib.contextmanager
def staged_version(
    folder: Path,
    name: str,
    manifest_fields: dict[str, Any],
    signing_key: bytes | None,
    versions: Callable[[], list[int]],
) -> Iterator[StagedVersion]:
    """Stage a version of model ``name`` in its ``folder``; publish it as the number after
    ``versions()`` when the block exits without error, else remove it.

    The manifest gets ``manifest_fields`` (filled in by the caller inside the block) with
    name, version and the sha256 of every file written into the staging directory."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    staged = StagedVersion(name, staging)
    try:
        yield staged
        files = hash_files(staging)
        # Claim the next number with a rename, retrying if a concurrent writer took it.
        while True:
            version = max(versions(), default=0) + 1
            fields = {**manifest_fields, "name": name, "version": version, "files": files}
            write_manifest(staging, fields, signing_key)
            target = folder / str(version)
            try:
                os.rename(staging, target)  # fails if target exists (non-empty dir)
            except OSError:
                if target.exists():
                    continue
                raise
            staged.version = version
            staged.path = target
            break
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
