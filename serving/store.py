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
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
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
MANIFEST_SCHEMA_VERSION = 1

_STAGING_PREFIX = ".staging-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH_CHUNK = 1 << 20


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


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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


def sign(key: bytes, manifest_bytes: bytes) -> str:
    """HMAC-SHA256 of the manifest file's bytes, hex encoded."""
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


class ModelStore:
    """Reads and writes model versions under one root directory.

    With a ``signing_key``, every version written gets ``manifest.sig`` (HMAC-SHA256 of the
    manifest bytes) and every version read must carry a matching one: someone who can write the
    store but does not hold the key cannot forge a manifest that lists their own hashes.
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

    def names(self) -> list[str]:
        """Models that have at least one published version, sorted."""
        if not self.root.is_dir():
            return []
        out = []
        for child in sorted(self.root.iterdir()):
            usable = child.is_dir() and not child.is_symlink() and _NAME_RE.fullmatch(child.name)
            if usable and self.versions(child.name):
                out.append(child.name)
        return out

    def versions(self, name: str) -> list[int]:
        """Published versions of a model, ascending. Staging directories are invisible."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in model_dir.iterdir()
            if p.name.isdigit() and p.is_dir() and (p / MANIFEST_FILE).is_file()
        )

    def production(self, name: str) -> int | None:
        """The version the production pointer names, or None when nothing is promoted."""
        pointer = self._model_dir(name) / PRODUCTION_FILE
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise StoreError(f"production pointer {pointer} is corrupt: {text!r}")
        return int(text)

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest, signature-checked when the store has a signing key."""
        path = self._version_dir(name, version) / MANIFEST_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {name!r} has no version {version}") from None
        if self._key is not None:
            self._check_signature(path, raw)
        return Manifest.model_validate_json(raw)

    def _check_signature(self, manifest_path: Path, raw: bytes) -> None:
        assert self._key is not None
        sig_path = manifest_path.with_name(SIGNATURE_FILE)
        try:
            claimed = sig_path.read_text(encoding="ascii").strip()
        except (FileNotFoundError, UnicodeDecodeError):
            raise IntegrityError(
                f"{manifest_path} is not signed ({sig_path.name} missing) and a signing key is set"
            ) from None
        if not hmac.compare_digest(claimed, sign(self._key, raw)):
            raise IntegrityError(f"signature {sig_path} does not match {manifest_path}")

    def version_path(self, name: str, version: int) -> Path:
        path = self._version_dir(name, version)
        if not (path / MANIFEST_FILE).is_file():
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        return path

    def onnx_path(self, manifest: Manifest) -> Path | None:
        """The version's ONNX file when it passed parity and is hashed; None otherwise."""
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

    def verify(self, name: str, version: int) -> Manifest:
        """Check every artifact file against the manifest's sha256; return the manifest.

        Raises IntegrityError naming the first file that is missing or does not match. Files in
        the version directory that the manifest does not list are ignored by readers, so they
        need no check.
        """
        manifest = self.manifest(name, version)
        vdir = self._version_dir(name, version)
        for rel, expected in manifest.files.items():
            path = (vdir / rel).resolve()
            if not path.is_relative_to(vdir.resolve()):
                raise IntegrityError(
                    f"{name} v{version}: manifest lists {rel!r} outside its version"
                )
            if not path.is_file():
                raise IntegrityError(f"{name} v{version}: artifact file {path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(
                    f"{name} v{version}: sha256 of {path} is {actual}, manifest says {expected}"
                )
        if MODEL_FILE not in manifest.files:
            raise IntegrityError(f"{name} v{version}: manifest does not list {MODEL_FILE}")
        return manifest

    def load_model(self, name: str, version: int) -> tuple[Manifest, Any]:
        """Verify hashes, then unpickle. Never unpickles a file that failed verification."""
        import joblib  # heavy; only readers that unpickle pay for it

        manifest = self.verify(name, version)
        path = self._version_dir(name, version) / MODEL_FILE
        try:
            model = joblib.load(path)
        except Exception as exc:
            raise ArtifactLoadError(
                f"{name} v{version}: cannot unpickle {path}: {type(exc).__name__}: {exc}"
            ) from exc
        return manifest, model

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
                        sign(self._key, manifest_bytes) + "\n", encoding="ascii"
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

    def promote(self, name: str, version: int) -> int | None:
        """Point production at ``version``; return the previous production version."""
        self.verify(name, version)
        previous = self.production(name)
        if previous == version:
            return previous
        model_dir = self._model_dir(name)
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
        current = self.production(name)
        history = self._history(name)
        while history and (history[-1] not in published or history[-1] == current):
            history.pop()
        if current is None or not history:
            raise StoreError(f"model {name!r} has no earlier production version to roll back to")
        target = history.pop()
        self.verify(name, target)
        model_dir = self._model_dir(name)
        _atomic_write_text(model_dir / PRODUCTION_FILE, f"{target}\n")
        _atomic_write_text(model_dir / HISTORY_FILE, json.dumps(history) + "\n")
        return current, target

    def _history(self, name: str) -> list[int]:
        try:
            raw = (self._model_dir(name) / HISTORY_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        data = json.loads(raw)
        return [int(v) for v in data]
