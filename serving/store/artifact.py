"""The artifact contract: what a model version folder holds and how a reader trusts it.

A version folder holds ``model.joblib`` (the fitted estimator), optionally ``model.onnx`` (and
under ``onnx/`` the graphs prepared from it that the service runs), ``explain.json`` (what
explaining its predictions needs) and a ``report/`` folder, and ``manifest.json``: the
:class:`Manifest` below, with the sha256 of every other file. With a signing key,
``manifest.sig`` binds the manifest to its model name and version number (:func:`sign`). This
module owns the manifest schema, the hashing, the signature and the verification of a folder;
:mod:`serving.store.layout` owns where folders lie and :mod:`serving.store.pointer` which one
serves.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
from collections.abc import Mapping
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

from serving.store.errors import ArtifactLoadError, IntegrityError, ModelNotFoundError
from serving.store.files import FILE_FLAGS, read_regular, read_under, refusing_links

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
ONNX_GRAPHS_DIR = "onnx"
EXPLAIN_FILE = "explain.json"
REPORT_DIR = "report"
MANIFEST_SCHEMA_VERSION = 1
SIGNATURE_FORMAT = "servewell-hmac-sha256-v2"
"""First word of ``manifest.sig``: which message the HMAC covers (see :func:`sign`)."""

_OLD_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


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


class OnnxGraphs(_Frozen):
    """The graphs the service runs, prepared from the ONNX file at export so that serving
    needs no ONNX tooling (:mod:`serving.execution.onnx_graphs`)."""

    files: dict[str, str]
    """Each kind of call (``both``, ``labels``) and the file (relative to the version folder)
    of the graph it runs: the ONNX file itself, or one under ``onnx/``."""
    inputs: list[str]
    outputs: list[str]
    """The outputs of the graph the kinds were cut from."""
    label_from: str | None = None
    """The output holding each row's class index, when the graph gives one."""


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
    graphs: OnnxGraphs | None = None
    """None for versions exported before the graphs were prepared at export: the service
    prepares them when it loads the version."""


class Explanations(_Frozen):
    """Whether the version's predictions can be explained feature by feature, and if not, why."""

    status: Literal["ok", "unsupported"]
    method: Literal["linear", "tree"] | None = None
    """``linear``: coefficients times centred inputs; ``tree``: TreeSHAP (serving.explain)."""
    space: str | None = None
    """What the contributions add up to: ``probability``, ``log-odds``, ``logit`` (a
    multi-class softmax margin) or ``value`` (a regressor's prediction)."""
    file: str | None = None
    """The background (relative to the version folder) when status is ok."""
    reason: str | None = None
    """Why not, when unsupported (names the estimator or preprocessing step)."""


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
    explain: Explanations | None = None
    """None for versions trained before explanations existed."""

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
    def explainable(self) -> bool:
        """True when an explanation background exists and is hashed."""
        explain = self.explain
        return (
            explain is not None
            and explain.status == "ok"
            and explain.file is not None
            and explain.file in self.files
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def primary_score(self) -> float:
        return self.metrics[self.primary_metric]


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

    @property
    def onnx_graphs(self) -> dict[str, bytes] | None:
        """The prepared graph of each kind of call, when the ONNX graph was asked for and the
        version has them; None otherwise."""
        onnx = self.manifest.onnx
        if self.onnx is None or onnx is None or onnx.graphs is None:
            return None
        graphs = {kind: self.files.get(rel) for kind, rel in onnx.graphs.files.items()}
        return {kind: graph for kind, graph in graphs.items() if graph is not None} or None

    @property
    def background(self) -> bytes | None:
        """The explanation background's JSON when the version has one and it was asked for."""
        explain = self.manifest.explain
        if not self.manifest.explainable or explain is None or explain.file is None:
            return None
        return self.files.get(explain.file)

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
        data = read_under(fd, rel, what, folder)
        _hash_check(what, folder / rel, data, expected)
        if rel in keep:
            kept[rel] = data
    return kept


def read_manifest(fd: int, folder: Path, name: str, version: int, key: bytes | None) -> Manifest:
    """The manifest of the version folder open as ``fd``, signature-checked when ``key`` is
    set; it must describe that folder."""
    path = folder / MANIFEST_FILE
    what = f"{name} v{version}"
    link = IntegrityError(f"{what}: {path} is a symbolic link; the store never follows one")
    try:
        with refusing_links(link):
            manifest_fd = os.open(MANIFEST_FILE, FILE_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        raise ModelNotFoundError(f"model {name!r} has no version {version}") from None
    try:
        raw = read_regular(manifest_fd, str(path))
    finally:
        os.close(manifest_fd)
    if key is not None:
        _check_signature(fd, path, name, version, raw, key)
    return _bound_manifest(raw, name, version)


def _check_signature(
    fd: int, manifest_path: Path, name: str, version: int, raw: bytes, key: bytes
) -> None:
    sig_path = manifest_path.with_name(SIGNATURE_FILE)
    try:
        sig_fd = os.open(SIGNATURE_FILE, FILE_FLAGS, dir_fd=fd)
        try:
            claimed = read_regular(sig_fd, str(sig_path)).decode("ascii").strip()
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
    if not hmac.compare_digest(claimed, sign(key, name, version, raw)):
        raise IntegrityError(f"signature {sig_path} does not match {manifest_path}")


def read_verified(
    fd: int,
    folder: Path,
    name: str,
    version: int,
    key: bytes | None,
    *,
    onnx: bool,
    model: bool,
    explain: bool = False,
) -> VerifiedVersion:
    """Check the manifest (and its signature) of the version folder open as ``fd`` and every
    file it lists; keep the bytes of the estimator (with ``model``), with ``onnx`` of the ONNX
    graph when it may serve, and with ``explain`` of the explanation background."""
    manifest = read_manifest(fd, folder, name, version, key)
    what = f"{name} v{version}"
    if MODEL_FILE not in manifest.files:
        raise IntegrityError(f"{what}: manifest does not list {MODEL_FILE}")
    keep = {MODEL_FILE} if model else set()
    if onnx and manifest.onnx_ready and manifest.onnx is not None and manifest.onnx.file:
        keep.add(manifest.onnx.file)
        if manifest.onnx.graphs is not None:
            keep.update(manifest.onnx.graphs.files.values())
    if explain and manifest.explainable and manifest.explain is not None and manifest.explain.file:
        keep.add(manifest.explain.file)
    kept = _check_files(fd, manifest, what, folder, keep)
    return VerifiedVersion(manifest, kept, folder)


def read_report_file(
    fd: int, folder: Path, name: str, version: int, key: bytes | None, file: str
) -> bytes:
    """One file of the version's report folder (``report/<file>``), as the manifest hashed it;
    ModelNotFoundError when the manifest lists no such file."""
    manifest = read_manifest(fd, folder, name, version, key)
    rel = f"{REPORT_DIR}/{file}"
    if "/" in file or rel not in manifest.files:
        raise ModelNotFoundError(f"{name} v{version} has no report file {file!r}")
    what = f"{name} v{version}"
    data = read_under(fd, rel, what, folder)
    _hash_check(what, folder / rel, data, manifest.files[rel])
    return data


def hash_files(folder: Path) -> dict[str, str]:
    """The ``files`` entry of a manifest: the sha256 of every file below ``folder``."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_onnx_graphs(folder: Path, onnx: bytes, graphs: Mapping[str, bytes]) -> dict[str, str]:
    """Write the prepared graph of each kind of call into ``folder``, next to the ONNX file
    ``onnx``; return the ``files`` of :class:`OnnxGraphs`. A graph that is the ONNX file
    itself is not written again, and kinds running the same graph share its file."""
    written: dict[bytes, str] = {onnx: ONNX_FILE}
    files: dict[str, str] = {}
    for kind, graph in graphs.items():
        if graph not in written:
            rel = f"{ONNX_GRAPHS_DIR}/{kind}.onnx"
            (folder / ONNX_GRAPHS_DIR).mkdir(exist_ok=True)
            (folder / rel).write_bytes(graph)
            written[graph] = rel
        files[kind] = written[graph]
    return files


def write_manifest(folder: Path, fields: dict[str, Any], key: bytes | None) -> None:
    """Validate ``fields`` as a manifest and write it (and its signature, with ``key``) into
    ``folder``."""
    manifest = Manifest.model_validate(fields)
    manifest_bytes = (manifest.model_dump_json(indent=2) + "\n").encode("utf-8")
    (folder / MANIFEST_FILE).write_bytes(manifest_bytes)
    if key is not None:
        (folder / SIGNATURE_FILE).write_text(
            sign(key, manifest.name, manifest.version, manifest_bytes) + "\n", encoding="ascii"
        )


def renewed_signature(fd: int, folder: Path, name: str, version: int, key: bytes) -> str | None:
    """The content of ``manifest.sig`` in the current format for the version folder open as
    ``fd``, or None when it already is.

    The version must carry a valid signature of the old format (the HMAC of the manifest
    bytes alone) made with the same key, describe its own folder, and every file must match
    the manifest: re-signing never blesses a manifest nobody signed."""
    what = f"{name} v{version}"
    try:
        raw = read_under(fd, MANIFEST_FILE, what, folder)
        claimed = read_under(fd, SIGNATURE_FILE, what, folder).decode("ascii").strip()
    except UnicodeDecodeError:
        raise IntegrityError(f"{what}: {SIGNATURE_FILE} is not readable") from None
    current = sign(key, name, version, raw)
    if hmac.compare_digest(claimed, current):
        return None
    old = hmac.new(key, raw, "sha256").hexdigest()
    if not hmac.compare_digest(claimed, old):
        raise IntegrityError(
            f"{what}: {SIGNATURE_FILE} is not a valid signature of the old format with "
            "this key; not re-signed"
        )
    _check_files(fd, _bound_manifest(raw, name, version), what, folder, set())
    return current
