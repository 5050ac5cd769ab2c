"""``POST /models/{name}/feedback``: true labels for captured predictions (serving.capture)."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serving.capture.feedback import JOINED, REFUSED, UNKNOWN, check_items
from serving.codecs.schemas import error_responses, inline_schema
from serving.core.errors import (
    CaptureOffError,
    CaptureUnavailableError,
    ErrorDetail,
    InvalidInputError,
    MalformedRequestError,
)
from serving.http.routes.admin import CredentialsDep
from serving.http.routes.deps import DataPlaneDep
from serving.settings import Settings

router = APIRouter(prefix="/models", tags=["feedback"])


class FeedbackItem(BaseModel):
    """One true label (documentation of the body: items are checked one by one)."""

    request_id: str = Field(description="The request's X-Request-ID (yours or the service's).")
    row: int = Field(0, ge=0, description="The row of that request, from 0.")
    label: str | int | float | bool | None = Field(None, description="Classifiers: a class.")
    value: float | None = Field(None, description="Regressors: the true value.")


_BODY = inline_schema(TypeAdapter(list[FeedbackItem]).json_schema())
_ERRORS = error_responses(
    {
        400: "The body is not JSON.",
        401: "No bearer token (SERVEWELL_FEEDBACK_TOKEN is set).",
        403: "Wrong token.",
        404: "No such model.",
        409: "Data capture is off.",
        422: "The body is not a list of 1 to SERVEWELL_FEEDBACK_MAX_ITEMS items.",
        503: "The capture database is unavailable (retry later).",
    }
)


def _check_token(settings: Settings, credentials: Any) -> None:
    token = settings.feedback_token
    if token is None or not token.get_secret_value():
        return
    if credentials is None:
        raise HTTPException(
            401, "feedback needs a bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "the feedback token is not valid")


def _items(body: bytes, limit: int) -> list[Any]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(
            "the request body is not valid JSON", [ErrorDetail((), str(exc), "json_invalid")]
        ) from None
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            "the body is a JSON list of feedback items",
            [ErrorDetail((), 'e.g. [{"request_id": "abc", "row": 0, "label": "setosa"}]')],
        )
    if len(items) > limit:
        raise InvalidInputError(
            f"at most {limit} feedback items per request (SERVEWELL_FEEDBACK_MAX_ITEMS)",
            [ErrorDetail((), f"{len(items)} items")],
        )
    return items


@router.post(
    "/{name}/feedback",
    summary="True labels for captured predictions, joined by request id and row",
    responses=_ERRORS,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": _BODY}}}},
)
async def post_feedback(
    name: Annotated[str, Path(description="Model name.")],
    request: Request,
    dataplane: DataPlaneDep,
    credentials: CredentialsDep,
) -> Response:
    settings: Settings = request.app.state.settings
    _check_token(settings, credentials)
    served = dataplane.resolve(name)
    capture = dataplane.capture
    if capture is None:
        raise CaptureOffError(
            "data capture is off (SERVEWELL_CAPTURE=none): no predictions to join labels to"
        )
    items = _items(await request.body(), settings.feedback_max_items)
    kept, outcomes = check_items(served.manifest, items)
    if kept:
        try:
            outcomes += await asyncio.to_thread(capture.feedback, name, kept, time.time())
        except Exception as exc:
            raise CaptureUnavailableError(
                f"the capture database is unavailable ({type(exc).__name__}); retry later",
                retry_after=5.0,
            ) from exc
    outcomes.sort(key=lambda o: o.index)
    counts = {s: sum(o.status == s for o in outcomes) for s in (JOINED, UNKNOWN, REFUSED)}
    body = {"model": name, **counts, "items": [o.to_json() for o in outcomes]}
    return Response(orjson.dumps(body), media_type="application/json")
