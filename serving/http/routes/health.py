"""Liveness and readiness probes."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from serving.http.routes.deps import HoldsTokenDep, without_store_root

router = APIRouter(prefix="/health", tags=["health"])


# HEAD too (some load balancers probe with it), kept out of the schema: one operation per path.
@router.head("/live", include_in_schema=False)
@router.get("/live", summary="The process is up")
async def live() -> Response:
    return Response(b'{"status":"alive"}', media_type="application/json")


@router.head("/ready", include_in_schema=False)
@router.get(
    "/ready",
    summary="Every model that should be served is loaded and the pool is up",
    responses={503: {"description": "Not ready; the body has the state of every model."}},
)
async def ready(request: Request, details: HoldsTokenDep) -> Response:
    """With ``SERVEWELL_PROTECT_INFO``, the state of the pool and of every model only for
    the admin token; the status code for anyone, since probes carry no token."""
    dataplane = getattr(request.app.state, "dataplane", None)
    if dataplane is None:
        body: dict[str, object] = {"ready": False, "models": {}} if details else {"ready": False}
        return Response(orjson.dumps(body), 503, media_type="application/json")
    ok, detail = dataplane.readiness()
    body = without_store_root(detail, dataplane.store.root) if details else {"ready": ok}
    return Response(orjson.dumps(body), 200 if ok else 503, media_type="application/json")
