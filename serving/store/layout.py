"""Where a store's models and versions lie, and which names and numbers are valid.

Layout under the store root::

    <root>/<name>/<version>/model.joblib     fitted estimator (a scikit-learn Pipeline)
    <root>/<name>/<version>/manifest.json    Manifest; sha256 of every other file
    <root>/<name>/<version>/report/...       metrics.json, plots, model card
    <root>/<name>/production                 text file holding the served version number
    <root>/<name>/history.json               earlier production versions (rollback stack)
    <root>/<name>/pointer.lock               held while the two above change

Hidden folders next to the versions (``.staging-*`` while a version is written,
``.removing-*`` while one is deleted) are never versions. What a version folder holds is
:mod:`serving.store.artifact`; the pointer files are :mod:`serving.store.pointer`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from serving.store.artifact import MANIFEST_FILE
from serving.store.errors import IntegrityError, InvalidNameError, ModelNotFoundError, StoreError
from serving.store.files import open_dir, refusing_links

PRODUCTION_FILE = "production"
HISTORY_FILE = "history.json"
LOCK_FILE = "pointer.lock"
STAGING_PREFIX = ".staging-"
REMOVING_PREFIX = ".removing-"

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


def model_dir(root: Path, name: str) -> Path:
    """The folder of model ``name`` under ``root`` (resolved), which need not exist yet."""
    path = root / validate_name(name)
    # A symlinked model directory could point anywhere; the store never follows one out.
    if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(root)):
        raise InvalidNameError(f"model directory {path} escapes the store root")
    return path


def model_folders(root: Path) -> list[str]:
    """Names of the folders under ``root`` that may hold a model, sorted."""
    if not root.is_dir():
        return []
    return [
        child.name
        for child in sorted(root.iterdir())
        if child.is_dir() and not child.is_symlink() and _NAME_RE.fullmatch(child.name)
    ]


def published_versions(folder: Path) -> list[int]:
    """Published versions in a model's folder, ascending. Staging directories are invisible.

    Raises StoreError for a folder whose name passes for a number but is not one the store
    writes (``01``, ``²``): a version someone meant to publish is never skipped silently."""
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
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


def open_version(path: Path, name: str, version: int) -> int:
    """An open descriptor of the version folder ``path`` (never through a symlink)."""
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
