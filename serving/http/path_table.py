"""The edge's table of prediction paths: which operation a path belongs to, and the served
version each exact path names (one dict lookup on the hot path)."""

from __future__ import annotations

import re
from typing import Any

from serving.core.dataplane import DataPlane, ServedModel
from serving.core.errors import ErrorDetail, InvalidInputError, NotReadyError
from serving.core.predictor import Codec

_VERSION = re.compile(r"[1-9][0-9]{0,17}")
"""Versions are written one way only: "01", "+1" or "1.0" are not version 1."""
_VERSION_RULE = "String should match pattern '^[1-9][0-9]{0,17}$'"
"""Pydantic's words for a path parameter that does not match, as the app's routes say it."""


def exact_paths(dataplane: DataPlane, prefix: str, operation: str) -> dict[str, ServedModel]:
    """``<prefix>/<name>/versions/<v>/<operation>`` for every served version, and
    ``<prefix>/<name>/<operation>`` for each production one."""
    paths: dict[str, ServedModel] = {}
    for served in dataplane.ready_models():
        name, version = served.key
        paths[f"{prefix}/{name}/versions/{version}/{operation}"] = served
        if dataplane.default_version.get(name) == version:
            paths[f"{prefix}/{name}/{operation}"] = served
    return paths


class PathTable:
    """The paths of one operation (``<prefix>/<name>[/versions/<v>]/<operation>``): each exact
    path of a served version mapped to it, and the codec that answers them; refilled when
    the models change."""

    def __init__(self, prefix: str, operation: str) -> None:
        self.prefix = prefix
        self.operation = operation
        self.start = prefix + "/"
        self.end = "/" + operation
        self.paths: dict[str, ServedModel] = {}
        self.codec: Codec[Any] | None = None
        self.dataplane: DataPlane | None = None
        self.endpoint = f"{prefix}/{{name}}/{operation}"
        self.versioned_endpoint = f"{prefix}/{{name}}/versions/{{version}}/{operation}"
        """Metric labels: one per path template, not one per model."""

    def fill(self, dataplane: DataPlane, codec: Codec[Any]) -> None:
        self.paths = exact_paths(dataplane, self.prefix, self.operation)
        self.dataplane = dataplane
        self.codec = codec

    def clear(self) -> None:
        self.paths = {}
        self.codec = None
        self.dataplane = None

    def parts(self, path: str) -> list[str] | None:
        """``[name]`` or ``[name, "versions", version]`` when the path has this operation's
        shape (served model or not), else None."""
        if not (path.startswith(self.start) and path.endswith(self.end)):
            return None
        parts = path[len(self.start) : -len(self.end)].split("/")
        if "" in parts:
            return None
        if len(parts) == 1 or (len(parts) == 3 and parts[1] == "versions"):
            return parts
        return None

    def resolve(self, path: str) -> ServedModel:
        """The served version a path that is not in the table names, or the domain error
        that says why none is (the same as the other endpoints')."""
        parts = self.parts(path)
        assert parts is not None
        if self.dataplane is None:
            raise NotReadyError("the service is starting")
        if len(parts) == 1:
            return self.dataplane.resolve(parts[0])
        if _VERSION.fullmatch(parts[2]) is None:
            detail = ErrorDetail(("path", "version"), _VERSION_RULE)
            raise InvalidInputError("the request is not valid", [detail])
        return self.dataplane.resolve(parts[0], int(parts[2]))

    def endpoint_of(self, path: str) -> str:
        return self.versioned_endpoint if "/versions/" in path else self.endpoint
