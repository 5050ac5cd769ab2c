"""The model store: where versions lie, which one serves, and how both change safely.

Layout under the store root::

    <root>/<name>/<version>/model.joblib     fitted estimator (a scikit-learn Pipeline)
    <root>/<name>/<version>/manifest.json    Manifest; sha256 of every other file
    <root>/<name>/<version>/report/...       metrics.json, plots, model card
    <root>/<name>/production                 text file holding the served version number
    <root>/<name>/history.json               earlier production versions (rollback stack)

Training writes through :meth:`ModelStore.create_version`, the service reads through
:meth:`ModelStore.load_model`; nothing else knows file names or the layout. What a version
folder holds and how it is verified is :mod:`serving.store.artifact`.

Atomicity: a version is assembled in a hidden staging directory next to its final place and
renamed into place only when every file and the manifest are written, so readers never see a
partial version and a failed run leaves nothing behind. Pointer files are replaced with
``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.store.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    REPORT_DIR,
    SIGNATURE_FILE,
    Manifest,
    VerifiedVersion,
    hash_files,
    read_manifest,
    read_verified,
    renewed_signature,
    write_manifest,
)
from serving.store.errors import IntegrityError, InvalidNameError, ModelNotFoundError, StoreError
from serving.store.files import (
    atomic_write_text,
    open_dir,
    read_file_nofollow,
    refusing_links,
)

PRODUCTION_FILE = "production"
HISTORY_FILE = "history.json"
LOCK_FILE = "pointer.lock"

_STAGING_PREFIX = ".staging-"
_REMOVING_PREFIX = ".removing-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# ASCII only and canonical: str.isdigit() also takes "²" (which int() refuses) and "01"
# would name the same version as "1".
_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")


def validate_name(name: str) -> str:
    """Reject names that are not a single safe path component."""
    if not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise InvalidNameError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def parse_version(text: str) -> int | None:
    """A version number written the one way the store writes it (ASCII digits, no sign, no
    leading zero), or None."""
    return int(text) if _VERSION_RE.fullmatch(text) else None


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    path: Path
    manifest: Manifest
    is_production: bool


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


class ModelStore:
    """Reads and writes model versions under one root directory.

    With a ``signing_key``, every version written gets ``manifest.sig`` (HMAC-SHA256 over the
    model name, the version number and the manifest bytes) and every version read must carry a
    matching one: someone who can write the store but does not hold the key can neither forge
    a manifest that lists their own hashes nor pass a signed version off as another one.

    No reader follows a symlink inside the store (model and version folders, artifact files,
    the production pointer, the history), and every file a runtime uses is read once: the bytes
    hashed are the bytes deserialised (:meth:`read_version`).
    """

    def __init__(self, root: Path | str, *, signing_key: bytes | None = None) -> None:
        self.root = Path(root).resolve()
        self._key = signing_key or None

    # -- reading -----------------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        # A symlinked model directory could point anywhere; the store never follows one out.
        if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(self.root)):
            raise InvalidNameError(f"model directory {path} escapes the store root")
        return path

    def _version_dir(self, name: str, version: int) -> Path:
        if version < 1:
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        return self._model_dir(name) / str(version)

    def _open_version(self, name: str, version: int) -> int:
        """An open descriptor of the version folder (never through a symlink)."""
        path = self._version_dir(name, version)
        missing = ModelNotFoundError(f"model {name!r} has no version {version}")
        escape = InvalidNameError(f"model directory {path.parent} escapes the store root")
        link = IntegrityError(
            f"{name} v{version}: the version folder {path} is a symbolic link (or not a "
            "folder); the store never follows one"
        )
        try:
            with refusing_links(escape):
                model_fd = open_dir(path.parent)
            try:
                with refusing_links(link):
                    return open_dir(path.name, model_fd)
            finally:
                os.close(model_fd)
        except FileNotFoundError:
            raise missing from None

    def names(self) -> list[str]:
        """Models that have at least one published version (or a folder the store cannot
        read, so that it is reported rather than ignored), sorted."""
        if not self.root.is_dir():
            return []
        out = []
        for child in sorted(self.root.iterdir()):
            usable = child.is_dir() and not child.is_symlink() and _NAME_RE.fullmatch(child.name)
            if not usable:
                continue
            try:
                published = bool(self.versions(child.name))
            except (StoreError, OSError):
                published = True
            if published:
                out.append(child.name)
        return out

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, ascending. Staging directories are invisible.

        Raises StoreError for a folder whose name passes for a number but is not one the
        store writes (``01``, ``²``): a version someone meant to publish is never skipped
        silently."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        out = []
        for p in model_dir.iterdir():
            version = parse_version(p.name)
            if version is None:
                if p.name.isdecimal() or p.name.isdigit() or p.name.isnumeric():
                    raise StoreError(
                        f"{p} is not a valid version folder name: use ASCII digits without "
                        "a leading zero"
                    )
                continue
            if p.is_dir() and (p / MANIFEST_FILE).is_file():
                out.append(version)
        return sorted(out)

    def production(self, name: str) -> int | None:
        """The version the production pointer names, or None when nothing is promoted."""
        pointer = self._model_dir(name) / PRODUCTION_FILE
        try:
            raw = read_file_nofollow(pointer)
        except FileNotFoundError:
            return None
        text = raw.decode("ascii", "replace").strip(" \t\r\n")
        version = parse_version(text)
        if version is None:
            raise StoreError(f"production pointer {pointer} is corrupt: {raw[:40]!r}")
        return version

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest, signature-checked when the store has a signing key."""
        fd = self._open_version(name, version)
        try:
            return read_manifest(fd, self._version_dir(name, version), name, version, self._key)
        finally:
            os.close(fd)

    def version_path(self, name: str, version: int) -> Path:
        path = self._version_dir(name, version)
        if not (path / MANIFEST_FILE).is_file():
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        return path

    def onnx_path(self, manifest: Manifest) -> Path | None:
        """Where the version's ONNX file lies when it passed parity and is hashed (for tools;
        the service reads verified bytes through :meth:`read_version`)."""
        if not manifest.onnx_ready or manifest.onnx is None or manifest.onnx.file is None:
            return None
        return self.version_path(manifest.name, manifest.version) / manifest.onnx.file

    def list_versions(self, name: str) -> list[VersionInfo]:
        prod = self.production(name)
        return [
            VersionInfo(
                name=name,
                version=v,
                path=self._version_dir(name, v),
                manifest=self.manifest(name, v),
                is_production=v == prod,
            )
            for v in self.versions(name)
        ]

    def read_version(
        self, name: str, version: int, *, onnx: bool = False, model: bool = True
    ) -> VerifiedVersion:
        """Check the manifest (and its signature) and every file it lists; keep the bytes of
        the estimator (with ``model``) and, with ``onnx``, of the ONNX graph when it may serve.

        Each file is read once, through descriptors opened below the version folder without
        following symlinks; the bytes hashed are the bytes returned. Raises IntegrityError
        naming the first file that is missing or does not match. Files in the version folder
        that the manifest does not list are never read by anyone, so they need no check.
        """
        fd = self._open_version(name, version)
        try:
            folder = self._version_dir(name, version)
            return read_verified(fd, folder, name, version, self._key, onnx=onnx, model=model)
        finally:
            os.close(fd)

    def verify(self, name: str, version: int) -> Manifest:
        """Check every artifact file against the manifest's sha256; return the manifest."""
        return self.read_version(name, version, model=False).manifest

    def load_model(self, name: str, version: int) -> tuple[Manifest, Any]:
        """Verify, then unpickle the very bytes verified (never a file that failed)."""
        verified = self.read_version(name, version)
        return verified.manifest, verified.estimator()

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def create_version(self, name: str, manifest_fields: dict[str, Any]) -> Iterator[StagedVersion]:
        """Stage a new version; publish it atomically when the block exits without error.

        ``manifest_fields`` is filled in by the caller inside the block (metrics etc.); the store
        adds name, version, and the sha256 of every file written into the staging directory.
        On any exception the staging directory is removed and nothing becomes visible.
        """
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = model_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        staged = StagedVersion(name, staging)
        try:
            yield staged
            files = hash_files(staging)
            # Claim the next number with a rename, retrying if a concurrent writer took it.
            while True:
                version = max(self.versions(name), default=0) + 1
                fields = {**manifest_fields, "name": name, "version": version, "files": files}
                write_manifest(staging, fields, self._key)
                target = model_dir / str(version)
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

    def resign(self, name: str, version: int) -> bool:
        """Sign a version in the current format; False when it already is.

        The version must carry a valid signature of the old format (the HMAC of the manifest
        bytes alone) made with the same key, describe its own folder, and every file must
        match the manifest: re-signing never blesses a manifest nobody signed."""
        if self._key is None:
            raise StoreError("re-signing needs a signing key (SERVEWELL_SIGNING_KEY)")
        fd = self._open_version(name, version)
        path = self._version_dir(name, version)
        try:
            signature = renewed_signature(fd, path, name, version, self._key)
        finally:
            os.close(fd)
        if signature is None:
            return False
        atomic_write_text(path / SIGNATURE_FILE, signature + "\n")
        return True

    @contextlib.contextmanager
    def _pointer_lock(self, name: str) -> Iterator[None]:
        """Hold the model's pointer lock: promote and rollback read, change and write the
        production pointer and the history under it, in the service and the CLI alike."""
        path = self._model_dir(name) / LOCK_FILE
        with refusing_links(StoreError(f"{path} is a symbolic link; the store never follows one")):
            # Read-only is enough for flock, so any user who can read the store can lock.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def promote(self, name: str, version: int) -> int | None:
        """Point production at ``version``; return the previous production version."""
        self.verify(name, version)
        model_dir = self._model_dir(name)
        with self._pointer_lock(name):
            previous = self.production(name)
            if previous == version:
                return previous
            if previous is not None:
                history = self._history(name)
                history.append(previous)
                atomic_write_text(model_dir / HISTORY_FILE, json.dumps(history) + "\n")
            atomic_write_text(model_dir / PRODUCTION_FILE, f"{version}\n")
        return previous

    def rollback(self, name: str) -> tuple[int, int]:
        """Return production to the version it had before the last promotion.

        Returns (from_version, to_version). Repeated rollbacks walk further back.
        """
        published = set(self.versions(name))
        if not published:
            raise ModelNotFoundError(f"no model named {name!r} in the store")
        model_dir = self._model_dir(name)
        with self._pointer_lock(name):
            current = self.production(name)
            history = self._history(name)
            while history and (history[-1] not in published or history[-1] == current):
                history.pop()
            if current is None or not history:
                raise StoreError(
                    f"model {name!r} has no earlier production version to roll back to"
                )
            target = history.pop()
            self.verify(name, target)
            atomic_write_text(model_dir / PRODUCTION_FILE, f"{target}\n")
            atomic_write_text(model_dir / HISTORY_FILE, json.dumps(history) + "\n")
        return current, target

    def previous_production(self, name: str) -> int | None:
        """The published version a rollback would return to, or None."""
        published = set(self.versions(name))
        current = self.production(name)
        earlier = [v for v in self._history(name) if v in published and v != current]
        return earlier[-1] if earlier else None

    def remove_versions(self, name: str, versions: list[int]) -> None:
        """Delete versions, never the production one nor the one a rollback returns to.

        Each is first renamed to a hidden name, which readers ignore, then deleted: readers see
        a version whole or not at all, and a crash in between leaves only a hidden folder that
        the next call clears. Held under the pointer lock, so no promote moves production onto
        a version being removed.
        """
        model_dir = self._model_dir(name)
        with self._pointer_lock(name):
            protected = {self.production(name), self.previous_production(name)}
            refused = sorted(set(versions) & protected - {None})
            if refused:
                raise StoreError(
                    f"model {name!r}: v{refused[0]} is production or what rollback returns to; "
                    "not removed"
                )
            for version in versions:
                path = self.version_path(name, version)
                os.rename(path, model_dir / f"{_REMOVING_PREFIX}{version}-{uuid.uuid4().hex}")
        for leftover in model_dir.glob(f"{_REMOVING_PREFIX}*"):
            shutil.rmtree(leftover)

    def _history(self, name: str) -> list[int]:
        path = self._model_dir(name) / HISTORY_FILE
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
