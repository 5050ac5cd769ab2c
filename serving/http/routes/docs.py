"""Swagger UI and ReDoc served from an installed package, so the docs work offline."""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from serving.http.routes.deps import InfoAccess

STATIC_URL = "/docs-static"
STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"
REDOC_JS = "redoc.standalone.js"
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
"""ReDoc's sidebar footer shows Redocly's logo from their CDN, whatever its options say: the
only outside address the docs would load. The bundle is served with it replaced by an empty
image (a newer bundle without it is served as it is; the browser test catches any other)."""
_EMPTY_SVG = b"data:image/svg+xml;base64,PHN2ZyB4bWxucz0naHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmcnLz4="

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
        # Swagger UI would fetch a validity badge from validator.swagger.io for a spec served
        # from a non-loopback address: the docs stay offline.
        swagger_ui_parameters={"validatorUrl": None},
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
    """A browser is sent to the web UI; any other client gets the links as JSON."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=307)
    return JSONResponse(
        {
            "name": "servewell",
            "version": request.app.version,
            "ui": "/ui",
            "overview": "/overview",
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "models": "/models",
            "health": "/health/ready",
            "metrics": "/metrics",
            "open_inference_protocol": "/v2",
        }
    )


@functools.cache
def _offline_redoc() -> bytes:
    return (STATIC_DIR / REDOC_JS).read_bytes().replace(REDOC_LOGO, _EMPTY_SVG)


@router.get(f"{STATIC_URL}/{REDOC_JS}")
async def redoc_bundle() -> Response:
    return Response(_offline_redoc(), media_type="text/javascript")


def install(app: FastAPI) -> None:
    app.include_router(index_router)
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")
