"""The model store: the one package that owns the on-disk artifact contract.

:mod:`serving.store.artifact` is the contract (manifest schema, hashes, signature,
verification), :mod:`serving.store.store` the :class:`ModelStore` everything reads and writes
versions through, built on :mod:`serving.store.layout` (where folders lie, valid names and
version numbers), :mod:`serving.store.publishing` (staging a version and renaming it into
place) and :mod:`serving.store.pointer` (the production pointer and its rollback history) and
:mod:`serving.store.traffic` (the traffic policy beside it);
:mod:`serving.store.files` holds the link-refusing file reads they share.
Everything is importable from here.
"""

from serving.store.artifact import (
    EXPLAIN_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    MODEL_FILE,
    ONNX_FILE,
    REPORT_DIR,
    SIGNATURE_FILE,
    SIGNATURE_FORMAT,
    Environment,
    Explanations,
    Feature,
    FeatureKind,
    Manifest,
    OnnxExport,
    OnnxGraphs,
    OnnxParity,
    Target,
    Task,
    VerifiedVersion,
    sha256_file,
    sign,
    write_onnx_graphs,
)
from serving.store.errors import (
    ArtifactLoadError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    StoreError,
)
from serving.store.layout import (
    HISTORY_FILE,
    LOCK_FILE,
    PRODUCTION_FILE,
    parse_version,
    validate_name,
)
from serving.store.publishing import StagedVersion
from serving.store.store import ModelStore, VersionInfo
from serving.store.traffic import Guard, TrafficMode, TrafficPolicy

__all__ = [
    "EXPLAIN_FILE",
    "HISTORY_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA_VERSION",
    "MODEL_FILE",
    "ONNX_FILE",
    "PRODUCTION_FILE",
    "REPORT_DIR",
    "SIGNATURE_FILE",
    "SIGNATURE_FORMAT",
    "ArtifactLoadError",
    "Environment",
    "Explanations",
    "Feature",
    "FeatureKind",
    "Guard",
    "IntegrityError",
    "InvalidNameError",
    "Manifest",
    "ModelNotFoundError",
    "ModelStore",
    "OnnxExport",
    "OnnxGraphs",
    "OnnxParity",
    "StagedVersion",
    "StoreError",
    "Target",
    "Task",
    "TrafficMode",
    "TrafficPolicy",
    "VerifiedVersion",
    "VersionInfo",
    "parse_version",
    "sha256_file",
    "sign",
    "validate_name",
    "write_onnx_graphs",
]
