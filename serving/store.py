"""The model store: the one module that owns the on-disk artifact contract.

Layout under the store root::

    <root>/<name>/<version>/model.joblib     fitted estimator (a scikit-learn Pipeline)
    <root>/<name>/<version>/manifest.json    Manifest below; sha256 of every other file
    <root>/<name>/<version>/report/...       metrics.json, plots, model card
    <root>/<name>/production                 text file holding the served version number
    <root>/<name>/history.json               earlier production versions (rollback stack)

Training writes through :meth:`ModelStore.create_version`, the service reads through
:meth:`ModelStore.load_model`; nothing else knows file names or the layout.

Atomicity: a version is assembled in a hidden staging directory next to its final place and
renamed into place only when every file and the manifest are written, so readers never see a
partial version and a failed run leaves nothing behind. Pointer files are replaced with
``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
REPORT_DIR = "report"
PRODUCTION_FILE = "production"
HISTORY_FILE = "history.json"
LOCK_FILE = "pointer.lock"
MANIFEST_SCHEMA_VERSION = 1
SIGNATURE_FORMAT = "servewell-hmac-sha256-v2"
"""First word of ``manifest.sig``: which message the HMAC covers (see :func:`sign`)."""

_STAGING_PREFIX = ".staging-"
_REMOVING_PREFIX = ".removing-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# ASCII only and canonical: str.isdigit() also takes "²" (which int() refuses) and "01"
# would name the same version as "1".
_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")
_OLD_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in place of a file must not hang the reader.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class StoreError(Exception):
    """Base class for model store errors (no transport semantics)."""


class ModelNotFoundError(StoreError):
    """The model or version does not exist in the store."""


class IntegrityError(StoreError):
    """An artifact file does not match the sha256 recorded in its manifest."""


class ArtifactLoadError(StoreError):
    """A verified artifact file could not be unpickled (e.g. written by incompatible code)."""


class InvalidNameError(StoreError):
    """A model name that could escape the store root or is otherwise unusable."""


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class FeatureKind(StrEnum):
    NUMERIC = "numeric"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    CATEGORICAL = "categorical"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Feature(_Frozen):
    """One input column, in the order the model expects it."""

    name: str
    kind: FeatureKind
    nullable: bool = False
    categories: list[str] | None = None
    """Allowed values of a categorical feature, as seen in training (sorted)."""
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    example: float | int | bool | str | None = None
    """A value taken from the training data, for documentation."""
    bin_edges: list[float] | None = None
    """Numeric, integer and boolean features: the distinct deciles of the training values,
    cutting them into ``len(bin_edges) + 1`` bins (bin ``i`` holds values ``v`` with
    ``bin_edges[i-1] < v <= bin_edges[i]``). Used to compare live inputs with training (PSI).
    None for versions trained before it was recorded."""
    bin_shares: list[float] | None = None
    """Share of the (non-null) training values in each bin of ``bin_edges``."""


class Target(_Frozen):
    name: str
    # Strict types: pydantic would otherwise turn bool labels into ints (and floats into
    # ints), and the served labels would no longer match their probability keys.
    classes: list[StrictStr] | list[StrictBool] | list[StrictInt] | list[StrictFloat] | None = None
    """Class labels in the order of ``predict_proba`` columns (classifiers only)."""


class Environment(_Frozen):
    python: str
    sklearn: str
    numpy: str
    joblib: str
    pandas: str
    git_commit: str | None = None


class OnnxParity(_Frozen):
    """How the ONNX graph was checked against the scikit-learn pipeline."""

    passed: bool
    rows_checked: int
    label_agreement: float
    """Share of rows whose predicted label is identical (1.0 for regressors)."""
    max_abs_diff: float
    """Largest absolute difference of probabilities (classifiers) or values (regressors)."""
    tolerance: float
    converter: str
    runtime: str


class OnnxExport(_Frozen):
    """Whether an ONNX compilation of the model exists and may serve, and if not, why."""

    status: Literal["ok", "conversion_failed", "parity_failed", "unavailable"]
    file: str | None = None
    """The ONNX file (relative to the version folder) when status is ok."""
    reason: str | None = None
    parity: OnnxParity | None = None
    seconds: float | None = None
    labels_from_probabilities: bool = False
    """Class labels are ``classes[argmax(probabilities)]`` (first maximum), as scikit-learn's
    forests decide, instead of the graph's label output, which breaks ties differently."""


class Manifest(_Frozen):
    """Everything a reader needs to know about one model version, without unpickling it."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    created: datetime
    task: Task
    input_format: Literal["ndarray", "dataframe"]
    """How rows are passed to the estimator. ``ndarray``: a 2-D float64 array, columns in feature
    order (booleans as 0.0/1.0). ``dataframe``: a pandas DataFrame with the feature names as
    columns in feature order, categorical columns holding ``str`` objects (dtype object) and
    every other column float64 (booleans as 0.0/1.0); used when a ColumnTransformer selects
    columns by name, e.g. mixed-type data. Missing values (nullable features) are NaN / None."""
    features: list[Feature]
    target: Target
    estimator: str
    metrics: dict[str, float]
    primary_metric: str
    higher_is_better: bool
    spec: dict[str, Any]
    data_fingerprint: str
    """sha256 of the full training table (before the holdout split), canonically serialised."""
    n_train_rows: int
    n_test_rows: int
    files: dict[str, str]
    """sha256 of every artifact file, keyed by its path relative to the version directory."""
    environment: Environment
    onnx: OnnxExport | None = None
    """None for versions trained before ONNX export existed."""

    @property
    def onnx_ready(self) -> bool:
        """True when an ONNX file exists, is hashed, and passed parity: it may serve."""
        return (
            self.onnx is not None
            and self.onnx.status == "ok"
            and self.onnx.file is not None
            and self.onnx.file in self.files
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def primary_score(self) -> float:
        return self.metrics[self.primary_metric]


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    path: Path
    manifest: Manifest
    is_production: bool


@dataclass(frozen=True)
class VerifiedVersion:
    """A version's manifest and the files a runtime uses, as the very bytes that were hashed.

    Nothing here re-opens a path: a file swapped on disk after verification is never read."""

    manifest: Manifest
    files: Mapping[str, bytes]
    folder: Path
    """Where the files were read (for messages; never opened again)."""

    @property
    def onnx(self) -> bytes | None:
        """The ONNX graph when it passed parity and was asked for; None otherwise."""
        onnx = self.manifest.onnx
        if not self.manifest.onnx_ready or onnx is None or onnx.file is None:
            return None
        return self.files.get(onnx.file)

    def estimator(self) -> Any:
        """Unpickle the fitted estimator from the verified bytes."""
        import joblib  # heavy; only readers that unpickle pay for it

        m = self.manifest
        try:
            return joblib.load(io.BytesIO(self.files[MODEL_FILE]))
        except Exception as exc:
            raise ArtifactLoadError(
                f"{m.name} v{m.version}: cannot unpickle {self.folder / MODEL_FILE}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def _atomic_write_text(path: Path, text: str) -> None:
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


def _is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink (OSError ELOOP/ENOTDIR for one)."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})
"""What ``open`` with ``O_NOFOLLOW`` (or ``O_DIRECTORY``) says of a symbolic link, or of a file
where a folder should be."""


@contextlib.contextmanager
def _refusing_links(refusal: Exception) -> Iterator[None]:
    """Raise ``refusal`` for a symbolic link met by the opens in the block; every other error
    (a missing file among them) passes through."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise refusal from None
        raise


def _read_regular(fd: int, what: str) -> bytes:
    """Every byte of an opened file, which must be a regular file."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise IntegrityError(f"{what} is not a regular file")
    chunks = []
    while chunk := os.read(fd, _HASH_CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_under(dir_fd: int, rel: str, what: str, folder: Path) -> bytes:
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
        with _refusing_links(link):
            current = dir_fd
            for part in parts[:-1]:
                current = _open_dir(part, current)
                opened.append(current)
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
        try:
            return _read_regular(fd, f"{what}: {folder / rel}")
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise IntegrityError(f"{what}: artifact file {folder / rel} is missing") from None
    finally:
        for fd in opened:
            os.close(fd)


def _read_file_nofollow(path: Path) -> bytes:
    """A file of a model folder, read without following a symlink at the folder or the file;
    FileNotFoundError when absent."""
    with _refusing_links(StoreError(f"{path} is a symbolic link; the store never follows one")):
        dir_fd = _open_dir(path.parent)
        try:
            fd = os.open(path.name, _FILE_FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    try:
        return _read_regular(fd, str(path))
    finally:
        os.close(fd)


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


def _signed_message(name: str, version: int, manifest_bytes: bytes) -> bytes:
    # Name and version are in the message so a signed manifest copied to another version
    # number or model is refused; neither can hold a NUL, and the manifest comes last.
    return b"\0".join(
        [
            SIGNATURE_FORMAT.encode("ascii"),
            name.encode("utf-8"),
            str(version).encode("ascii"),
            manifest_bytes,
        ]
    )


def sign(key: bytes, name: str, version: int, manifest_bytes: bytes) -> str:
    """The content of ``manifest.sig``: the format tag and the HMAC-SHA256 (hex) of the tag,
    the model name, the version number and the manifest file's bytes."""
    digest = hmac.new(key, _signed_message(name, version, manifest_bytes), "sha256").hexdigest()
    return f"{SIGNATURE_FORMAT} {digest}"


def _bound_manifest(raw: bytes, name: str, version: int) -> Manifest:
    """The manifest, which must describe the folder it lies in (signed or not)."""
    manifest = Manifest.model_validate_json(raw)
    if manifest.name != name or manifest.version != version:
        raise IntegrityError(
            f"{name} v{version}: its manifest describes {manifest.name} v{manifest.version} (a "
            "version copied or moved to another folder); refused"
        )
    return manifest


def _hash_check(what: str, path: Path, data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(f"{what}: sha256 of {path} is {actual}, manifest says {expected}")


def _check_files(
    fd: int, manifest: Manifest, what: str, folder: Path, keep: set[str]
) -> dict[str, bytes]:
    """Hash every file the manifest lists (below the open version folder ``fd``); return the
    bytes of those in ``keep``."""
    kept: dict[str, bytes] = {}
    for rel, expected in manifest.files.items():
        data = _read_under(fd, rel, what, folder)
        _hash_check(what, folder / rel, data, expected)
        if rel in keep:
            kept[rel] = data
    return kept


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
            with _refusing_links(escape):
                model_fd = _open_dir(path.parent)
            try:
                with _refusing_links(link):
                    return _open_dir(path.name, model_fd)
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
            raw = _read_file_nofollow(pointer)
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
            return self._manifest_at(fd, name, version)
        finally:
            os.close(fd)

    def _manifest_at(self, fd: int, name: str, version: int) -> Manifest:
        path = self._version_dir(name, version) / MANIFEST_FILE
        what = f"{name} v{version}"
        link = IntegrityError(f"{what}: {path} is a symbolic link; the store never follows one")
        try:
            with _refusing_links(link):
                manifest_fd = os.open(MANIFEST_FILE, _FILE_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {name!r} has no version {version}") from None
        try:
            raw = _read_regular(manifest_fd, str(path))
        finally:
            os.close(manifest_fd)
        if self._key is not None:
            self._check_signature(fd, path, name, version, raw)
        return _bound_manifest(raw, name, version)

    def _check_signature(
        self, fd: int, manifest_path: Path, name: str, version: int, raw: bytes
    ) -> None:
        assert self._key is not None
        sig_path = manifest_path.with_name(SIGNATURE_FILE)
        try:
            sig_fd = os.open(SIGNATURE_FILE, _FILE_FLAGS, dir_fd=fd)
            try:
                claimed = _read_regular(sig_fd, str(sig_path)).decode("ascii").strip()
            finally:
                os.close(sig_fd)
        except (OSError, UnicodeDecodeError, IntegrityError):
            raise IntegrityError(
                f"{manifest_path} is not signed ({sig_path.name} missing or unreadable) and a "
                "signing key is set"
            ) from None
        if _OLD_SIGNATURE_RE.fullmatch(claimed):
            raise IntegrityError(
                f"signature {sig_path} uses the old format, which does not bind the manifest to "
                "its model name and version; re-sign the store with the same key: "
                "`python -m training sign`"
            )
        if not hmac.compare_digest(claimed, sign(self._key, name, version, raw)):
            raise IntegrityError(f"signature {sig_path} does not match {manifest_path}")

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
            manifest = self._manifest_at(fd, name, version)
            what = f"{name} v{version}"
            if MODEL_FILE not in manifest.files:
                raise IntegrityError(f"{what}: manifest does not list {MODEL_FILE}")
            keep = {MODEL_FILE} if model else set()
            if onnx and manifest.onnx_ready and manifest.onnx is not None and manifest.onnx.file:
                keep.add(manifest.onnx.file)
            kept = _check_files(fd, manifest, what, self._version_dir(name, version), keep)
        finally:
            os.close(fd)
        return VerifiedVersion(manifest, kept, self._version_dir(name, version))

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
            files = {
                p.relative_to(staging).as_posix(): sha256_file(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            # Claim the next number with a rename, retrying if a concurrent writer took it.
            while True:
                version = max(self.versions(name), default=0) + 1
                manifest = Manifest.model_validate(
                    {**manifest_fields, "name": name, "version": version, "files": files}
                )
                manifest_bytes = (manifest.model_dump_json(indent=2) + "\n").encode("utf-8")
                (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
                if self._key is not None:
                    (staging / SIGNATURE_FILE).write_text(
                        sign(self._key, name, version, manifest_bytes) + "\n", encoding="ascii"
                    )
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
        try:
            path = self._version_dir(name, version)
            what = f"{name} v{version}"
            try:
                raw = _read_under(fd, MANIFEST_FILE, what, path)
                claimed = _read_under(fd, SIGNATURE_FILE, what, path).decode("ascii").strip()
            except UnicodeDecodeError:
                raise IntegrityError(f"{what}: {SIGNATURE_FILE} is not readable") from None
            if hmac.compare_digest(claimed, sign(self._key, name, version, raw)):
                return False
            old = hmac.new(self._key, raw, "sha256").hexdigest()
            if not hmac.compare_digest(claimed, old):
                raise IntegrityError(
                    f"{what}: {SIGNATURE_FILE} is not a valid signature of the old format with "
                    "this key; not re-signed"
                )
            _check_files(fd, _bound_manifest(raw, name, version), what, path, set())
        finally:
            os.close(fd)
        _atomic_write_text(path / SIGNATURE_FILE, sign(self._key, name, version, raw) + "\n")
        return True

    @contextlib.contextmanager
    def _pointer_lock(self, name: str) -> Iterator[None]:
        """Hold the model's pointer lock: promote and rollback read, change and write the
        production pointer and the history under it, in the service and the CLI alike."""
        path = self._model_dir(name) / LOCK_FILE
        with _refusing_links(StoreError(f"{path} is a symbolic link; the store never follows one")):
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
                _atomic_write_text(model_dir / HISTORY_FILE, json.dumps(history) + "\n")
            _atomic_write_text(model_dir / PRODUCTION_FILE, f"{version}\n")
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
            _atomic_write_text(model_dir / PRODUCTION_FILE, f"{target}\n")
            _atomic_write_text(model_dir / HISTORY_FILE, json.dumps(history) + "\n")
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
            raw = _read_file_nofollow(path)
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
