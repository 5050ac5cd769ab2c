"""``GET /overview`` (every model at a glance, JSON) and the web UI's pages, which render the
same data server-side (serving/http/ui)."""

from __future__ import annotations

import asyncio
from html import escape
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from serving.codecs.schemas import error_responses
from serving.core.errors import NotReadyError, ServingError, UnknownModelError
from serving.core.lifecycle import store_call
from serving.http.routes.deps import InfoAccess, without_store_root
from serving.http.routes.models import model_detail
from serving.http.ui.charts import PALETTE, line_chart
from serving.observe.overview import overview

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
REFRESH_S = 10
"""How often the overview page reloads itself (a meta refresh: no script needed)."""

router = APIRouter(dependencies=[InfoAccess])


async def _overview(request: Request, only: str | None = None) -> dict[str, Any]:
    state = request.app.state
    if state.dataplane is None:
        raise NotReadyError("the service is starting")
    return await overview(state.dataplane, state.observability, state.quality, only)


@router.get(
    "/overview",
    tags=["models"],
    responses=error_responses({503: "The service is starting."}),
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
async def ui_overview(
    request: Request, refresh: Annotated[int, Query(ge=0, le=3600)] = REFRESH_S
) -> HTMLResponse:
    """``refresh``: seconds between reloads (0: never)."""
    body = await _overview(request)
    page = _templates(request.app).get_template("overview.html")
    return HTMLResponse(page.render(models=body["models"], refresh=refresh))


@router.get("/ui/models/{name}", include_in_schema=False)
async def ui_model(name: str, request: Request) -> HTMLResponse:
    """One model: what ``GET /models/{name}``, ``/models/{name}/versions`` and ``/overview``
    say of it, and its model card with the training report's plots."""
    state = request.app.state
    dataplane = state.dataplane
    if dataplane is None or state.lifecycle is None:
        raise NotReadyError("the service is starting")
    root = dataplane.store.root
    detail = without_store_root(model_detail(dataplane, name), root)
    versions = without_store_root(await state.lifecycle.versions(name), root)
    body = await _overview(request, name)
    entry = next((m for m in body["models"] if m["name"] == name), None)
    if entry is None:  # swapped out meanwhile
        raise UnknownModelError(f"no model named {name!r} is served")
    ready = entry["state"] == "ready"
    version = detail["version"]
    try:
        card = await store_call(dataplane.store.report_file, name, version, "model_card.md")
    except ServingError as exc:  # a version without a report, or one that fails its hash
        card_html = (
            f"<p class='muted'>No model card: {escape(without_store_root(str(exc), root))}</p>"
        )
    else:
        card_html = render_card(card.decode("utf-8"), f"/models/{name}/versions/{version}/report/")
    page = _templates(request.app).get_template("model.html")
    drift = {f["name"]: f for f in entry.get("drift", {}).get("features", [])}
    charts = await _charts(request, detail) if ready else []
    experiment = None
    if ready and entry["traffic"]["mode"] != "production":
        try:
            experiment = await state.rollout.compare(name)  # as GET /models/{name}/compare
        except ServingError as exc:  # e.g. the capture database is down: say so, render
            experiment = {"error": str(exc)}
    html = page.render(
        detail=detail,
        entry=entry,
        versions=versions,
        drift=drift,
        card_html=card_html,
        admin_enabled=state.settings.admin_enabled,
        charts=charts,
        experiment=experiment,
        ready=ready,
    )
    return HTMLResponse(html)


async def _charts(request: Request, detail: dict[str, Any]) -> list[str]:
    """Drift of each feature over the last hour (``/models/{name}/drift/history``) and live
    quality over the last day (``/models/{name}/quality/history``), as SVG."""
    state = request.app.state
    name, version = detail["name"], detail["version"]
    out = []
    history = state.observability.drift_history
    if history is not None:
        points = history.of(name, version)
        latest = points[-1]["features"] if points else {}
        ranked = sorted(latest, key=lambda f: -(latest[f]["psi"] or 0.0))[: len(PALETTE)]
        series = [
            (f, [(p["t"], p["features"].get(f, {}).get("psi")) for p in points]) for f in ranked
        ]
        title = "Input drift: PSI per feature, last hour"
        out.append(line_chart(series, title=title, reference=("significant", 0.25), y_min=0.0))
    monitor = state.quality
    if monitor is not None:
        manifest = state.dataplane.resolve(name, version).manifest
        try:
            buckets = await asyncio.to_thread(monitor.history, manifest, 86400.0, 48)
        except Exception:  # the capture database is a side system: the page still renders
            out.append("<p class='muted'>Live quality: the capture database is unavailable.</p>")
        else:
            metric = detail["primary_metric"]
            series = [(metric, [((b["start"] + b["end"]) / 2, b["value"]) for b in buckets])]
            holdout = detail["metrics"].get(metric)
            reference = ("holdout", holdout) if holdout is not None else None
            title = f"Live {metric} of labelled traffic, last 24 hours (30-minute slices)"
            out.append(line_chart(series, title=title, reference=reference))
    return out


def render_card(markdown: str, report_url: str) -> str:
    """The model card as HTML; its plots (relative links into the report folder) point at
    the report endpoint. Raw HTML in the card is escaped, not passed through."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        src = tokens[idx].attrGet("src") or ""
        if src and "/" not in src and ":" not in src:
            tokens[idx].attrSet("src", report_url + src)
        return str(renderer.image(tokens, idx, options, env))  # the stock rule

    md.add_render_rule("image", image)
    return str(md.render(markdown))


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
