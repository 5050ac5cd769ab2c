"""The application factory. Nothing heavy happens at import: models load in the lifespan."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Receive, Scope, Send

from serving.codecs.oip.service import InferenceService
from serving.core.dataplane import DataPlane
from serving.core.lifecycle import Lifecycle
from serving.core.loading import build_dataplane
from serving.http import exception_handlers
from serving.http.edge import Edge
from serving.http.routes import admin, docs, health, models, observe, v2
from serving.http.routes.predict import model_router
from serving.observe.observability import Observability
from serving.settings import Settings

log = logging.getLogger("servewell")

DESCRIPTION = """\
Predictions from scikit-learn models in the servewell model store.

Every served model has its own typed operation under **predict**. Errors always have the shape
`{"error": {"type": "...", "message": "...", "details": [{"loc": [...], "msg": "..."}]}}`.
"""


class ServiceApp(FastAPI):
    """The FastAPI app, entered through the request edge (serving.http.edge): every HTTP request
    passes it first, and it answers the served prediction paths itself. An override rather
    than a middleware, because FastAPI's own outer middlewares would run before any we add."""

    edge: Edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.edge(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> ServiceApp:
    """Build the service. Models are verified and loaded, and the inference pool started,
    when the app starts (lifespan), not here."""
    settings = settings or Settings()
    log.setLevel(settings.log_level.upper())
    observability = Observability(settings)
    edge = Edge(settings, observability)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dataplane = build_dataplane(settings)
        started = time.monotonic()
        try:
            await dataplane.start()
        except BaseException:
            dataplane.close()
            raise
        lifecycle = Lifecycle(dataplane)
        inference_service = InferenceService(dataplane)
        model_routes: list[Any] = []

        def follow_models() -> None:
            """Routes, fast path and OpenAPI follow the served set (start and every swap)."""
            before = len(app.router.routes)
            app.include_router(model_router(dataplane))
            added = app.router.routes[before:]
            stale = {id(route) for route in model_routes}
            app.router.routes[:] = [r for r in app.router.routes if id(r) not in stale]
            model_routes[:] = added
            edge.predict.fill(dataplane, dataplane)
            edge.infer.fill(dataplane, inference_service)
            app.openapi_schema = None

        app.state.dataplane = dataplane
        app.state.inference_service = inference_service
        follow_models()
        lifecycle.listeners.append(follow_models)
        observability.start(dataplane, time.monotonic() - started)
        lifecycle.listeners.append(observability.follow)
        lifecycle.load_listeners.append(observability.model_loaded)
        app.state.lifecycle = lifecycle
        lifecycle.start_polling()
        ok, _ = dataplane.readiness()
        log.log(
            logging.INFO if ok else logging.WARNING,
            "servewell %s: %d model version(s) served",
            "ready" if ok else "NOT ready",
            len(dataplane.ready_models()),
        )
        try:
            yield
        finally:
            await lifecycle.stop()
            await observability.stop()
            app.state.lifecycle = None
            edge.predict.clear()
            edge.infer.clear()
            app.state.inference_service = None
            app.state.dataplane = None
            dataplane.close()

    app = ServiceApp(
        title="servewell",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by serving.http.routes.docs, behind SERVEWELL_PROTECT_INFO
        # A trailing slash gets a JSON 404 rather than a bodiless redirect.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.dataplane = None
    app.state.lifecycle = None
    app.state.observability = observability
    app.state.inference_service = None
    app.edge = edge
    exception_handlers.install(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(observe.router)
    app.include_router(admin.router, include_in_schema=settings.admin_enabled)
    app.include_router(v2.router)
    docs.install(app)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The default schema plus the per-model request models, which routes reference by name
    (the routes read raw bytes and validate them with pydantic's JSON parser, for speed)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        dataplane: DataPlane | None = app.state.dataplane
        for served in dataplane.ready_models() if dataplane else []:
            assert served.request_model is not None
            body = served.request_model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(body.pop("$defs", {}))
            components[served.request_model.__name__] = body
        app.openapi_schema = schema
        return schema

    return openapi
