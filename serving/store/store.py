"""The model store: where versions lie, which one serves, and how both change safely.

:class:`ModelStore` is the one object the rest of the code reads and writes versions through:
training writes through :meth:`ModelStore.create_version`, the service reads through
:meth:`ModelStore.load_model`; nothing else knows file names or the layout. Its parts, one
concept each: :mod:`serving.store.layout` (where folders lie, valid names and numbers),
:mod:`serving.store.artifact` (what a version folder holds and how it is verified),
:mod:`serving.store.publishing` (a new version, staged and renamed into place whole) and
:mod:`serving.store.pointer` (the production pointer, its history and lock) and
:mod:`serving.store.traffic` (the traffic policy beside the pointer). This module reads and
verifies versions and removes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.store import pointer, traffic
from serving.store.artifact import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Manifest,
    VerifiedVersion,
    read_manifest,
    read_report_file,
    read_verified,
    renewed_signature,
)
from serving.store.errors import ModelNotFoundError, StoreError
from serving.store.files import atomic_write_text
from serving.store.layout import (
    HISTORY_FILE,
    LOCK_FILE,
    PRODUCTION_FILE,
    REMOVING_PREFIX,
    model_dir,
    model_folders,
    open_version,
    parse_version,
    published_versions,
    validate_name,
)
from serving.store.publishing import StagedVersion, staged_version
from serving.store.traffic import TrafficPolicy

__all__ = [
    "HISTORY_FILE",
    "LOCK_FILE",
    "PRODUCTION_FILE",
    "ModelStore",
    "StagedVersion",
    "VersionInfo",
    "parse_version",
    "validate_name",
]


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    path: Path
    manifest: Manifest
    is_production: bool


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

    # -- where things lie --------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        return model_dir(self.root, name)

    def _version_dir(self, name: str, version: int) -> Path:
        if version < 1:
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        return self._model_dir(name) / str(version)

    def _open_version(self, name: str, version: int) -> int:
        """An open descriptor of the version folder (never through a symlink)."""
        return open_version(self._version_dir(name, version), name, version)

    def names(self) -> list[str]:
        """Models that have at least one published version (or a folder the store cannot
        read, so that it is reported rather than ignored), sorted."""
        out = []
        for name in model_folders(self.root):
            try:
                published = bool(self.versions(name))
            except (StoreError, OSError):
                published = True
            if published:
                out.append(name)
        return out

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, ascending. Staging directories are invisible.

        Raises StoreError for a folder whose name passes for a number but is not one the
        store writes (``01``, ``²``): a version someone meant to publish is never skipped
        silently."""
        return published_versions(self._model_dir(name))

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

    # -- reading and verifying ---------------------------------------------------------------

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest, signature-checked when the store has a signing key."""
        fd = self._open_version(name, version)
        try:
            return read_manifest(fd, self._version_dir(name, version), name, version, self._key)
        finally:
            os.close(fd)

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
        self,
        name: str,
        version: int,
        *,
        onnx: bool = False,
        model: bool = True,
        explain: bool = False,
    ) -> VerifiedVersion:
        """Check the manifest (and its signature) and every file it lists; keep the bytes of
        the estimator (with ``model``), with ``onnx`` of the ONNX graph when it may serve, and
        with ``explain`` of the explanation background.

        Each file is read once, through descriptors opened below the version folder without
        following symlinks; the bytes hashed are the bytes returned. Raises IntegrityError
        naming the first file that is missing or does not match. Files in the version folder
        that the manifest does not list are never read by anyone, so they need no check.
        """
        fd = self._open_version(name, version)
        try:
            folder = self._version_dir(name, version)
            return read_verified(
                fd, folder, name, version, self._key, onnx=onnx, model=model, explain=explain
            )
        finally:
            os.close(fd)

    def report_file(self, name: str, version: int, file: str) -> bytes:
        """A file of the version's report (a plot, the model card), hash-checked."""
        fd = self._open_version(name, version)
        try:
            folder = self._version_dir(name, version)
            return read_report_file(fd, folder, name, version, self._key, file)
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

    def create_version(
        self, name: str, manifest_fields: dict[str, Any]
    ) -> contextlib.AbstractContextManager[StagedVersion]:
        """Stage a new version; publish it atomically when the block exits without error.

        ``manifest_fields`` is filled in by the caller inside the block (metrics etc.); the store
        adds name, version, and the sha256 of every file written into the staging directory.
        On any exception the staging directory is removed and nothing becomes visible.
        """
        folder = self._model_dir(name)
        return staged_version(folder, name, manifest_fields, self._key, lambda: self.versions(name))

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

    def remove_versions(self, name: str, versions: list[int]) -> None:
        """Delete versions, never the production one nor the one a rollback returns to.

        Each is first renamed to a hidden name, which readers ignore, then deleted: readers see
        a version whole or not at all, and a crash in between leaves only a hidden folder that
        the next call clears. Held under the pointer lock, so no promote moves production onto
        a version being removed.
        """
        folder = self._model_dir(name)
        with pointer.pointer_lock(folder):
            protected = {self.production(name), self.previous_production(name)}
            refused = sorted(set(versions) & protected - {None})
            if refused:
                raise StoreError(
                    f"model {name!r}: v{refused[0]} is production or what rollback returns to; "
                    "not removed"
                )
            for version in versions:
                path = self.version_path(name, version)
                os.rename(path, folder / f"{REMOVING_PREFIX}{version}-{uuid.uuid4().hex}")
        for leftover in folder.glob(f"{REMOVING_PREFIX}*"):
            shutil.rmtree(leftover)

    # -- the production pointer (serving.store.pointer) ---------------------------------------

    def production(self, name: str) -> int | None:
        """The version the production pointer names, or None when nothing is promoted."""
        return pointer.production(self._model_dir(name))

    def promote(self, name: str, version: int) -> int | None:
        """Point production at ``version``; return the previous production version."""
        self.verify(name, version)
        return pointer.promote(self._model_dir(name), version)

    def rollback(self, name: str) -> tuple[int, int]:
        """Return production to the version it had before the last promotion.

        Returns (from_version, to_version). Repeated rollbacks walk further back.
        """
        published = set(self.versions(name))
        if not published:
            raise ModelNotFoundError(f"no model named {name!r} in the store")
        folder = self._model_dir(name)
        return pointer.rollback(folder, name, published, lambda v: self.verify(name, v))

    def previous_production(self, name: str) -> int | None:
        """The published version a rollback would return to, or None."""
        published = set(self.versions(name))
        return pointer.previous_production(self._model_dir(name), published)

    def _history(self, name: str) -> list[int]:
        return pointer.history(self._model_dir(name))

    # -- the traffic policy (serving.store.traffic) --------------------------------------------

    def traffic(self, name: str) -> TrafficPolicy | None:
        """The model's traffic policy, or None when no experiment runs."""
        return traffic.read(self._model_dir(name))

    def set_traffic(self, name: str, policy: TrafficPolicy) -> None:
        """Replace the model's policy after verifying every version it names: each must match
        its manifest's hashes and take the same inputs as production (one request body fits
        them all). Production must still be the version the policy was set against."""
        policy.check()
        folder = self._model_dir(name)
        base = self.verify(name, policy.production)
        wanted = _inputs(base)
        for version in policy.candidates:
            manifest = self.verify(name, version)
            if _inputs(manifest) != wanted:
                raise StoreError(
                    f"model {name!r} v{version} takes other inputs than production "
                    f"v{policy.production} (feature names, kinds or categories differ); "
                    "versions in one experiment must accept the same requests"
                )
            if manifest.task != base.task:
                raise StoreError(
                    f"model {name!r} v{version} is a {manifest.task} model and production "
                    f"v{policy.production} a {base.task} one"
                )
        if policy.key_field is not None and policy.key_field not in base.feature_names:
            raise StoreError(
                f"key_field {policy.key_field!r} is not a feature of {name!r}; "
                f"its features: {', '.join(base.feature_names)}"
            )
        with pointer.pointer_lock(folder):
            if self.production(name) != policy.production:
                raise StoreError(
                    f"model {name!r}: production is no longer v{policy.production}; "
                    "set the policy again"
                )
            atomic_write_text(folder / traffic.TRAFFIC_FILE, traffic.dumps(policy))

    def end_traffic(self, name: str) -> TrafficPolicy | None:
        """Remove the model's policy; return the one that was in force, if any."""
        folder = self._model_dir(name)
        with pointer.pointer_lock(folder):
            try:
                ended = self.traffic(name)
            except StoreError:
                ended = None  # a corrupt policy is removed all the same
            traffic.remove(folder)
        return ended


def _inputs(manifest: Manifest) -> list[tuple[str, str, bool, tuple[str, ...] | None]]:
    """What a request body must hold for a version: its features' names, kinds and
    categories (training ranges may differ)."""
    return [
        (f.name, f.kind.value, f.nullable, None if f.categories is None else tuple(f.categories))
        for f in manifest.features
    ]
