"""Swagger UI and ReDoc served from an installed package, so the docs work offline."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from serving.http.routes.deps import InfoAccess

STATIC_URL = "/docs-static"
STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"

# The schema names every model's features, estimator and metric: protected like the rest.
router = APIRouter(include_in_schema=False, dependencies=[InfoAccess])


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="servewell - Swagger UI",
        swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_URL}/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="servewell - ReDoc",
        redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{STATIC_URL}/favicon.png",
        with_google_fonts=False,
    )


# The front door stays open whatever is protected: it names where things are, nothing more.
index_router = APIRouter()


@index_router.get("/", summary="Where to go from here: the API docs, health and models")
async def index(request: Request) -> Response:
    """A browser is sent to the API docs; any other client gets the links as JSON."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/docs", status_code=307)
    return JSONResponse(
        {
            "name": "servewell",
            "version": request.app.version,
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "models": "/models",
            "health": "/health/ready",
            "metrics": "/metrics",
            "open_inference_protocol": "/v2",
        }
    )


def install(app: FastAPI) -> None:
    app.include_router(index_router)
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")
