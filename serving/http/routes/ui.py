"""``GET /overview`` (every model at a glance, JSON) and the web UI's pages, which render the
same data server-side (serving/http/ui)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from serving.core.errors import NotReadyError
from serving.http.routes.deps import InfoAccess
from serving.observe.overview import overview

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
REFRESH_S = 10
"""How often the overview page reloads itself (a meta refresh: no script needed)."""

router = APIRouter(dependencies=[InfoAccess])


async def _overview(request: Request) -> dict[str, Any]:
    state = request.app.state
    if state.dataplane is None:
        raise NotReadyError("the service is starting")
    return await asyncio.to_thread(overview, state.dataplane, state.observability, state.quality)


@router.get(
    "/overview",
    tags=["models"],
    summary="Every model at a glance: production version, runtime, traffic policy, the last "
    "minute's requests, latency and errors, input drift and live quality",
)
async def get_overview(request: Request) -> Response:
    """Per model: its production version and the versions served, runtime, traffic policy
    (production, shadow, canary or A/B with weights), per served version the last minute's
    requests per second, p50/p99 latency and 5xx share (this server process), the drift
    status of its recent inputs (PSI > 0.1 moderate, > 0.25 significant) and, with capture
    on, its live primary metric next to the holdout one and whether it is degraded."""
    return Response(orjson.dumps(await _overview(request)), media_type="application/json")


@router.get("/ui", include_in_schema=False)
async def ui_overview(request: Request) -> HTMLResponse:
    body = await _overview(request)
    page = _templates(request.app).get_template("overview.html")
    return HTMLResponse(page.render(models=body["models"], refresh=REFRESH_S))


def _templates(app: FastAPI) -> Any:
    return app.state.ui_templates


def install(app: FastAPI) -> None:
    import jinja2  # only an app that serves the UI loads it

    app.state.ui_templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(UI_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")
