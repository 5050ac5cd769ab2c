"""The model store: the one package that owns the on-disk artifact contract.

:mod:`serving.store.artifact` is the contract (manifest schema, hashes, signature,
verification), :mod:`serving.store.store` the layout and the production pointer
(:class:`ModelStore`), :mod:`serving.store.files` the link-refusing file reads they share.
Everything is importable from here.
"""

from serving.store.artifact import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    MODEL_FILE,
    ONNX_FILE,
    REPORT_DIR,
    SIGNATURE_FILE,
    SIGNATURE_FORMAT,
    Environment,
    Feature,
    FeatureKind,
    Manifest,
    OnnxExport,
    OnnxParity,
    Target,
    Task,
    VerifiedVersion,
    sha256_file,
    sign,
)
from serving.store.errors import (
    ArtifactLoadError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    StoreError,
)
from serving.store.store import (
    HISTORY_FILE,
    LOCK_FILE,
    PRODUCTION_FILE,
    ModelStore,
    StagedVersion,
    VersionInfo,
    parse_version,
    validate_name,
)

__all__ = [
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
    "Feature",
    "FeatureKind",
    "IntegrityError",
    "InvalidNameError",
    "Manifest",
    "ModelNotFoundError",
    "ModelStore",
    "OnnxExport",
    "OnnxParity",
    "StagedVersion",
    "StoreError",
    "Target",
    "Task",
    "VerifiedVersion",
    "VersionInfo",
    "parse_version",
    "sha256_file",
    "sign",
    "validate_name",
]
