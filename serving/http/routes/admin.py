"""The admin API: reload, promote, rollback and list versions of a model in the running service.

Protected by a bearer token (``SERVEWELL_ADMIN_TOKEN``, compared in constant time); without a
configured token the whole API answers 404, so it is never open by accident.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.capture.capture import Capture
from serving.codecs.schemas import error_responses
from serving.core.errors import CaptureOffError, CaptureUnavailableError, NotReadyError
from serving.core.lifecycle import Lifecycle
from serving.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The admin token (SERVEWELL_ADMIN_TOKEN).")


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def bearer_credentials(request: Request) -> HTTPAuthorizationCredentials | None:
    """The bearer token a request carries, read without declaring a security scheme."""
    return await _bearer(request)


def check_token(
    settings: Settings, credentials: HTTPAuthorizationCredentials | None, what: str
) -> None:
    """Refuse a caller without the admin token (401) or with another one (403); ``what``
    needs the token, for the message."""
    assert settings.admin_token is not None
    secret = settings.admin_token.get_secret_value()
    if credentials is None:
        raise HTTPException(
            401, f"{what} needs a bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(credentials.credentials.encode(), secret.encode()):
        raise HTTPException(403, "the admin token is not valid")


def require_admin(request: Request, credentials: CredentialsDep) -> Lifecycle:
    """The lifecycle of the running service, for a caller that holds the admin token."""
    settings: Settings = request.app.state.settings
    if not settings.admin_enabled:
        raise HTTPException(404, "the admin API is disabled (no admin token is configured)")
    check_token(settings, credentials, "the admin API")
    lifecycle: Lifecycle | None = getattr(request.app.state, "lifecycle", None)
    if lifecycle is None:
        raise NotReadyError("the service is starting")
    return lifecycle


AdminDep = Annotated[Lifecycle, Depends(require_admin)]
Name = Annotated[str, Path(description="Model name (one safe path component).")]
Version = Annotated[int, Path(ge=1, description="A published version number.")]

_ERRORS = error_responses(
    {
        400: "Invalid model name.",
        401: "No bearer token.",
        403: "Wrong token.",
        404: "Admin API disabled, or unknown model or version.",
        409: "Refused: the version failed verification or loading, or nothing to roll back "
        "to; or data capture is off.",
        503: "The capture database is unavailable.",
    }
)

router = APIRouter(prefix="/admin/models", tags=["admin"], responses=_ERRORS)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.post("/{name}/reload", summary="Re-read the store for a model and swap if it changed")
async def reload(name: Name, lifecycle: AdminDep) -> Response:
    return _json(await lifecycle.reload(name))


@router.post("/{name}/promote/{version}", summary="Make a version production and swap to it")
async def promote(name: Name, version: Version, lifecycle: AdminDep) -> Response:
    return _json(await lifecycle.promote(name, version))


@router.post("/{name}/rollback", summary="Return to the previous production version")
async def rollback(name: Name, lifecycle: AdminDep) -> Response:
    return _json(await lifecycle.rollback(name))


@router.get("/{name}/versions", summary="Published versions: production, served, errors")
async def versions(name: Name, lifecycle: AdminDep) -> Response:
    return _json(await lifecycle.versions(name))


@router.get("/{name}/captures", summary="Captured predictions of a model with their labels")
async def captures(
    name: Name,
    request: Request,
    lifecycle: AdminDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most rows, newest first.")] = 100,
    since: Annotated[
        datetime | None, Query(description="Only rows predicted at or after (ISO 8601, UTC).")
    ] = None,
    labelled: Annotated[bool, Query(description="Only rows with a label.")] = False,
) -> Response:
    capture: Capture | None = lifecycle.dataplane.capture
    if capture is None:
        raise CaptureOffError("data capture is off (SERVEWELL_CAPTURE=none)")
    start = None if since is None else (since if since.tzinfo else since.replace(tzinfo=UTC))
    try:
        rows = await asyncio.to_thread(
            capture.read,
            name,
            limit=limit,
            since=None if start is None else start.timestamp(),
            labelled_only=labelled,
        )
    except Exception as exc:
        raise CaptureUnavailableError(
            f"the capture database is unavailable ({type(exc).__name__}); retry later",
            retry_after=5.0,
        ) from exc
    return _json({"model": name, "count": len(rows), "rows": rows})
