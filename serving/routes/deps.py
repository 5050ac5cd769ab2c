"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from serving.dataplane import DataPlane
from serving.errors import NotReadyError


def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane | None = getattr(request.app.state, "dataplane", None)
    if dataplane is None:
        raise NotReadyError("the service is starting")
    return dataplane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
