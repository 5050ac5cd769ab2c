"""Shared route dependencies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from serving.core.dataplane import DataPlane
from serving.core.errors import NotReadyError
from serving.http.routes.admin import bearer_credentials, check_token
from serving.settings import Settings


def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane | None = getattr(request.app.state, "dataplane", None)
    if dataplane is None:
        raise NotReadyError("the service is starting")
    return dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


# These read the token themselves rather than through a security dependency, which would
# declare in the OpenAPI schema that every one of these operations needs it: without
# ``protect_info`` none does, and readiness never requires it.


async def protect_info(request: Request) -> None:
    """With ``protect_info``, only a caller with the admin token may go on."""
    settings: Settings = request.app.state.settings
    if settings.protect_info:
        credentials = await bearer_credentials(request)
        check_token(settings, credentials, "this endpoint (SERVEWELL_PROTECT_INFO)")


async def holds_token(request: Request) -> bool:
    """Whether the caller may see details ``protect_info`` hides: always without the
    setting; with it, only with the admin token (a wrong token is a 403, no token False)."""
    settings: Settings = request.app.state.settings
    if not settings.protect_info:
        return True
    credentials = await bearer_credentials(request)
    if credentials is None:
        return False
    check_token(settings, credentials, "")
    return True


InfoAccess = Depends(protect_info)
"""For ``dependencies=[...]`` of the routes that ``protect_info`` puts behind the token."""
HoldsTokenDep = Annotated[bool, Depends(holds_token)]


def without_store_root(value: Any, root: Path) -> Any:
    """``value`` (a response being built: dicts, lists, text) with the store's absolute path
    written ``<store>`` in its texts: errors name artifact files, and where the store lies
    on the server's disk is no client's business (the log keeps the whole text)."""
    absolute = str(root.resolve())
    if isinstance(value, str):
        return value.replace(absolute, "<store>")
    if isinstance(value, dict):
        return {key: without_store_root(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [without_store_root(item, root) for item in value]
    return value
