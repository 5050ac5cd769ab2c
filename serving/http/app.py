"""The application factory. Nothing heavy happens at import: models load in the lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from serving.capture.capture import from_settings
from serving.capture.monitor import QualityMonitor
from serving.codecs.oip.service import InferenceService
from serving.codecs.typed import TypedCodec
from serving.core.dataplane import DataPlane
from serving.core.idle_poll import IdlePoll
from serving.core.lifecycle import Lifecycle
from serving.core.loading import build_dataplane
from serving.http import exception_handlers
from serving.http.edge import Edge
from serving.http.routes import (
    admin,
    docs,
    feedback,
    health,
    models,
    observe,
    predict,
    quality,
    traffic,
    ui,
    v2,
)
from serving.observe.observability import Observability
from serving.rollout.control import Rollout
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.grpc.server import GrpcServer

log = logging.getLogger("servewell")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """\
Predictions from scikit-learn models in the servewell model store.

Every served model has its own typed operation under **predict**. Errors always have the shape
`{"error": {"type": "...", "message": "...", "details": [{"loc": [...], "msg": "..."}]}}`.
"""


class ServiceApp(FastAPI):
    """The FastAPI app, behind the request edge (serving.http.edge, an ASGI middleware):
    every HTTP request passes the edge, which answers the prediction paths itself.

    The edge wraps the whole middleware stack FastAPI builds rather than being added with
    ``add_middleware``, which would put FastAPI's outer layers (server errors, exception
    telemetry, body limit) in front of it. Paired on one core against the former entry (an
    override of ``__call__``), single-row predictions kept 101 % of their throughput this
    way and 95 % as an added middleware."""

    edge: Edge

    def build_middleware_stack(self) -> ASGIApp:
        return self.edge.around(super().build_middleware_stack())


def create_app(settings: Settings | None = None) -> ServiceApp:
    """Build the service. Models are verified and loaded, and the inference pool started,
    when the app starts (lifespan), not here."""
    settings = settings or Settings()
    log.setLevel(settings.log_level.upper())
    observability = Observability(settings)
    edge = Edge(settings, observability)
    app = _service_app(_lifespan(settings, observability, edge))
    app.state.settings = settings
    app.state.dataplane = None
    app.state.lifecycle = None
    app.state.observability = observability
    app.state.inference_service = None
    app.state.quality = None
    app.state.rollout = None
    app.state.grpc_port = None
    app.edge = edge
    _install_routes(app, settings)
    return app


def _service_app(lifespan: Lifespan) -> ServiceApp:
    """The bare app: its metadata, and FastAPI's defaults the service does not want."""
    return ServiceApp(
        title="servewell",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by serving.http.routes.docs, behind SERVEWELL_PROTECT_INFO
        # A trailing slash gets a JSON 404 rather than a bodiless redirect.
        redirect_slashes=False,
        # Its HTTP spans and metrics would run for every request, before the edge (about
        # 20 µs a request, checking for providers); the service has its own metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )


def _install_routes(app: ServiceApp, settings: Settings) -> None:
    """Error handlers, one router per resource, the docs and the OpenAPI document."""
    exception_handlers.install(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(feedback.router)
    app.include_router(quality.router)
    app.include_router(observe.router)
    app.include_router(traffic.router)
    app.include_router(admin.router, include_in_schema=settings.admin_enabled)
    app.include_router(traffic.admin_router, include_in_schema=settings.admin_enabled)
    app.include_router(v2.router)
    docs.install(app)
    ui.install(app)
    app.openapi = _openapi(app)  # type: ignore[method-assign]


def _lifespan(settings: Settings, observability: Observability, edge: Edge) -> Lifespan:
    """Start the data plane (verify and load the models, start the pool) when the app
    starts, serve it until the app stops, then stop everything in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dataplane = build_dataplane(settings)
        started = time.monotonic()
        try:
            await dataplane.start()
        except BaseException:
            dataplane.close()
            raise
        dataplane.capture = capture = from_settings(settings)
        monitor = None if capture is None else QualityMonitor(capture, settings)
        app.state.quality = observability.quality = monitor
        lifecycle = _serve(app, dataplane, edge, observability, started)
        app.state.rollout = rollout = Rollout(lifecycle, capture, settings)
        await rollout.resume()
        rollout.start_guard()
        grpc_server = await _start_grpc(
            app, settings, dataplane, lifecycle, observability, edge.idle
        )
        if monitor is not None:
            monitor.start(lambda: [s.manifest for s in dataplane.ready_models()])
        try:
            yield
        finally:
            if grpc_server is not None:  # its calls in flight finish, within the grace time
                await grpc_server.stop(settings.shutdown_grace_s)
            await rollout.stop()
            app.state.rollout = None
            await lifecycle.stop()
            if monitor is not None:
                await monitor.stop()
            if capture is not None:  # what is still queued is written, within the grace time
                await asyncio.to_thread(capture.close, settings.shutdown_grace_s)
            await observability.stop()
            app.state.lifecycle = None
            edge.predict.clear()
            edge.infer.clear()
            app.state.inference_service = None
            app.state.dataplane = None
            dataplane.close()

    return lifespan


def _serve(
    app: FastAPI, dataplane: DataPlane, edge: Edge, observability: Observability, started: float
) -> Lifecycle:
    """Put a started data plane behind the app: its state, the edge's paths, observability
    and the lifecycle that keeps them in step with the store (polling started). ``started``:
    when the data plane began to start (``time.monotonic``), for the load time."""
    lifecycle = Lifecycle(dataplane)
    inference_service = InferenceService(dataplane)
    typed = TypedCodec(dataplane)

    def follow_models() -> None:
        """The edge's paths and the OpenAPI document follow the served set (start and
        every swap)."""
        edge.predict.fill(dataplane, typed)
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
    return lifecycle


async def _start_grpc(
    app: FastAPI,
    settings: Settings,
    dataplane: DataPlane,
    lifecycle: Lifecycle,
    observability: Observability,
    idle: IdlePoll,
) -> GrpcServer | None:
    """The Open Inference Protocol over gRPC on ``grpc_port`` (None when it is 0), in this
    event loop; its health service follows readiness through every swap."""
    if not settings.grpc_port:
        return None
    from serving.grpc.server import GrpcServer, GrpcService  # grpcio: only when it serves

    service = GrpcService(
        settings, dataplane, app.state.inference_service, lifecycle, observability
    )
    server = GrpcServer(settings, service, idle)
    port = await server.start()
    if port is None:
        return None
    tasks: set[asyncio.Task[None]] = set()

    def follow() -> None:
        task = asyncio.get_running_loop().create_task(server.follow_readiness())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    lifecycle.listeners.append(follow)
    app.state.grpc_port = port
    log.info("servewell: Open Inference Protocol over gRPC on %s:%d", settings.host, port)
    return server


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's routes, the inference operations and one typed predict operation per served
    path, with the per-model request models they reference by name (the edge answers those
    paths: it reads raw bytes and validates them with pydantic's JSON parser, for speed).
    Cached until the served models change."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        dataplane: DataPlane | None = app.state.dataplane
        served_models = dataplane.ready_models() if dataplane else []
        routes = [*app.routes, *v2.infer_operations]
        if dataplane is not None:
            routes += predict.operations(dataplane)
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for served in served_models:
            body = served.request_model.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components.update(body.pop("$defs", {}))
            components[served.request_model.__name__] = body
        app.openapi_schema = schema
        return schema

    return openapi
