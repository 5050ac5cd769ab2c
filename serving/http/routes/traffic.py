"""Traffic experiments over HTTP: ``PUT``/``GET``/``DELETE /admin/models/{name}/traffic`` (admin
token) and ``GET /models/{name}/compare`` (serving.rollout)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from serving.codecs.schemas import error_responses
from serving.core.errors import NotReadyError
from serving.http.routes.admin import AdminDep, Name
from serving.http.routes.deps import InfoAccess, without_store_root
from serving.rollout.control import Rollout
from serving.rollout.policy import TrafficRequest
from serving.store import Guard, TrafficMode


class GuardBody(BaseModel):
    """Return a canary's traffic to production when it does worse by more than a margin."""

    model_config = ConfigDict(extra="forbid")
    max_error_rate_increase: float = Field(
        0.05, ge=0, le=1, description="Candidate error rate minus production's (absolute)."
    )
    max_quality_drop: float | None = Field(
        0.05,
        ge=0,
        description="Live primary metric below production's by more than this (absolute); "
        "null: not guarded. Needs data capture and feedback labels.",
    )
    min_requests: int = Field(
        200, ge=1, description="Requests (and labelled rows) each version needs first."
    )


class TrafficBody(BaseModel):
    """A traffic policy: shadow a candidate, or share requests among versions."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"mode": "shadow", "version": 2, "sample": 1.0},
                {"mode": "canary", "version": 2, "weight": 10, "key_field": None},
                {"mode": "ab", "weights": {"1": 50, "2": 50}},
            ]
        },
    )
    mode: Literal["shadow", "canary", "ab"]
    version: int | None = Field(None, ge=1, description="Shadow, canary: the candidate.")
    sample: float = Field(
        1.0, gt=0, le=1, description="Shadow: share of requests the candidate also predicts."
    )
    weight: float | None = Field(
        None, gt=0, lt=100, description="Canary: percent of requests the candidate answers."
    )
    weights: dict[int, float] | None = Field(
        None, description="A/B: version -> weight (shares are weight / total)."
    )
    key_field: str | None = Field(
        None,
        description="Canary, A/B: a feature whose value (first row) keeps a user on one "
        "version when no X-Routing-Key header is sent.",
    )
    guard: GuardBody | None = Field(None, description="Canary, A/B: the automatic guard.")

    def request(self) -> TrafficRequest:
        guard = None if self.guard is None else Guard(**self.guard.model_dump())
        return TrafficRequest(
            mode=TrafficMode(self.mode),
            version=self.version,
            sample=self.sample,
            weight=self.weight,
            weights=self.weights,
            key_field=self.key_field,
            guard=guard,
        )


_ADMIN_ERRORS = error_responses(
    {
        400: "Invalid model name.",
        401: "No bearer token.",
        403: "Wrong token.",
        404: "Admin API disabled, unknown model or version, or no experiment to end.",
        409: "Refused: a version failed verification or loading, takes other inputs than "
        "production, or the model has no production version; the previous policy stays.",
        422: "The policy is not valid (the field is named).",
    }
)
admin_router = APIRouter(prefix="/admin/models", tags=["admin"], responses=_ADMIN_ERRORS)
router = APIRouter(prefix="/models", tags=["rollout"], dependencies=[InfoAccess])


def _rollout(request: Request) -> Rollout:
    rollout: Rollout | None = getattr(request.app.state, "rollout", None)
    if rollout is None:
        raise NotReadyError("the service is starting")
    return rollout


def _json(body: dict[str, Any], request: Request) -> Response:
    root = request.app.state.settings.store
    return Response(orjson.dumps(without_store_root(body, root)), media_type="application/json")


@admin_router.put("/{name}/traffic", summary="Start or replace a shadow, canary or A/B experiment")
async def put_traffic(
    name: Name, body: Annotated[TrafficBody, Body()], request: Request, _: AdminDep
) -> Response:
    return _json(await _rollout(request).set(name, body.request()), request)


@admin_router.get("/{name}/traffic", summary="The model's traffic policy")
async def get_traffic(name: Name, request: Request, _: AdminDep) -> Response:
    return _json(await _rollout(request).get(name), request)


@admin_router.delete("/{name}/traffic", summary="End the experiment: production answers alone")
async def end_traffic(name: Name, request: Request, _: AdminDep) -> Response:
    return _json(await _rollout(request).end(name), request)


@router.get(
    "/{name}/compare",
    summary="The versions of a running experiment side by side",
    responses=error_responses(
        {
            400: "Invalid model name.",
            404: "No such model, or it runs no experiment.",
            503: "The capture database is unavailable (retry later).",
        }
    ),
)
async def compare(name: Name, request: Request) -> Response:
    return _json(await _rollout(request).compare(name), request)
