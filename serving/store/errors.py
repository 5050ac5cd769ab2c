"""Errors of the model store (no transport semantics; the HTTP layer maps them)."""

from __future__ import annotations


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
