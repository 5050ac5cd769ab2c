"""The Open Inference Protocol over gRPC: a ``grpc.aio`` server in the service's own process and
event loop, over the same request path, batchers and pool as HTTP.

``ModelInfer`` takes and gives raw bytes: the codec (:mod:`serving.grpc.codec`) parses and
writes the messages inside :func:`serving.core.predictor.answer`, as the HTTP codecs do bodies,
so experiments, capture and admission apply alike. Every other method uses the generated
messages. Domain errors become gRPC status codes (:data:`CODES`) with the same messages as over
HTTP; nothing a client sends ends as ``UNKNOWN`` or ``INTERNAL`` (only a model that raises, or a
fault of the service itself, is ``INTERNAL``). The client's deadline becomes the request's
deadline. The standard health service follows readiness, and reflection lists the services.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.codecs.oip.service import REPOSITORY_EXTENSION, SERVER_NAME, InferenceService
from serving.core.admission import deadline_in
from serving.core.context import (
    CURRENT,
    RequestContext,
    new_request_id,
    valid_request_id,
)
from serving.core.dataplane import DataPlane
from serving.core.errors import (
    ArtifactRefusedError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    InvalidModelNameError,
    LifecycleConflictError,
    ModelUnavailableError,
    NotReadyError,
    OverloadedError,
    RefusedError,
    RetryableError,
    ServingError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.core.lifecycle import Lifecycle
from serving.core.predictor import answer
from serving.grpc.codec import GrpcCodec, parse
from serving.grpc.generated import inference_pb2 as pb
from serving.observe.observability import Observability
from serving.settings import Settings
from serving.store import parse_version

log = logging.getLogger("servewell.grpc")

SERVICE = "inference.GRPCInferenceService"
INFER_METHOD = f"/{SERVICE}/ModelInfer"

CODES: list[tuple[type[ServingError], grpc.StatusCode]] = [
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidModelNameError, grpc.StatusCode.INVALID_ARGUMENT),
    (RefusedError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownModelError, grpc.StatusCode.NOT_FOUND),
    (UnknownVersionError, grpc.StatusCode.NOT_FOUND),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ArtifactRefusedError, grpc.StatusCode.FAILED_PRECONDITION),
    (LifecycleConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (RetryableError, grpc.StatusCode.UNAVAILABLE),
    (InferenceError, grpc.StatusCode.INTERNAL),
]
"""Domain error -> status code, the first class that matches (subclasses before bases)."""

M = TypeVar("M", bound=Message)


def code_of(error: ServingError) -> grpc.StatusCode:
    for kind, code in CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class GrpcService:
    """The servicer: every method of ``inference.GRPCInferenceService``."""

    def __init__(
        self,
        settings: Settings,
        dataplane: DataPlane,
        inference: InferenceService,
        lifecycle: Lifecycle,
        observability: Observability,
    ) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.inference = inference
        self.lifecycle = lifecycle
        self.codec = GrpcCodec(inference)
        self.metrics = observability.metrics
        self.access = observability.access

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Callable[[Any, Any], Awaitable[Message]], request: type[M]) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                _refusals(fn),
                request_deserializer=request.FromString,
                response_serializer=_serialize,
            )

        methods = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            # Bytes in and out: the codec parses and writes the messages.
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": unary(self.repository_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": unary(self.repository_unload, pb.RepositoryModelUnloadRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    # -- health and metadata -------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> Message:
        return pb.ServerReadyResponse(ready=self.dataplane.readiness()[0])

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> Message:
        try:
            self._resolve(request.name, request.version)
        except (UnknownModelError, UnknownVersionError, ModelUnavailableError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> Message:
        extensions = [REPOSITORY_EXTENSION] if self.settings.admin_enabled else []
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_package_version(), extensions=extensions
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> Message:
        served = self._resolve(request.name, request.version)
        found = self.inference.metadata(served)
        return pb.ModelMetadataResponse(
            name=found["name"],
            versions=found["versions"],
            platform=found["platform"],
            inputs=[_tensor_metadata(t) for t in found["inputs"]],
            outputs=[_tensor_metadata(t) for t in found["outputs"]],
        )

    # -- inference -----------------------------------------------------------------------------

    async def model_infer(self, body: bytes, context: Any) -> bytes:
        started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        given = metadata.get("x-request-id")
        request_id = given if given and valid_request_id(given.encode()) else new_request_id()
        ctx = RequestContext(request_id, started=started)
        CURRENT.set(ctx)
        remaining = context.time_remaining()
        settings = self.settings
        seconds = settings.request_timeout_s if remaining is None else remaining
        ctx.deadline = deadline_in(min(seconds, settings.max_request_timeout_s))
        code = grpc.StatusCode.OK
        try:
            request = parse(body)
            served = self._resolve(request.model_name, request.model_version)
            routed = not request.model_version and bool(self.dataplane.registry.routes)
            payload, _ = await answer(self.codec, self.dataplane, served, body, (), ctx, routed)
            context.set_trailing_metadata(
                (("x-request-id", request_id), ("x-model-version", ctx.version))
            )
            return payload
        except ServingError as exc:
            code = code_of(exc)
            context.set_trailing_metadata((("x-request-id", request_id),))
            await context.abort(code, _message(exc, request_id, code))
            raise  # abort raises; never reached
        except Exception:
            if code is grpc.StatusCode.OK:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in ModelInfer")
                await context.abort(code, f"internal error (request id {request_id})")
            raise
        finally:
            self._record(ctx, code, time.perf_counter() - started)

    def _record(self, ctx: RequestContext, code: grpc.StatusCode, seconds: float) -> None:
        status = code.value[0]
        if self.metrics is not None:
            self.metrics.request_done(ctx.model, ctx.version, INFER_METHOD, status, seconds)
        if self.access is not None:
            entry = (time.time(), ctx.request_id, "GRPC", INFER_METHOD, status, seconds)
            self.access.add((*entry, ctx.model, ctx.version, ctx.rows))

    def _resolve(self, name: str, version: str) -> Any:
        if not version:
            return self.dataplane.resolve(name)
        number = parse_version(version)
        if number is None:
            raise InvalidInputError(f"model version {version!r} is not a version number")
        return self.dataplane.resolve(name, number)

    # -- model repository extension ------------------------------------------------------------

    def _admin(self, context: Any) -> None:
        secret = self.settings.admin_token
        if secret is None:
            raise _AbortError(grpc.StatusCode.PERMISSION_DENIED, "the admin API is disabled")
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not given.startswith("Bearer "):
            message = "needs authorization: Bearer <token>"
            raise _AbortError(grpc.StatusCode.UNAUTHENTICATED, message)
        token = given.removeprefix("Bearer ").encode()
        if not hmac.compare_digest(token, secret.get_secret_value().encode()):
            raise _AbortError(grpc.StatusCode.PERMISSION_DENIED, "the admin token is not valid")

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Any) -> Message:
        self._admin(context)
        names = self.lifecycle.store.names()
        entries = self.inference.repository_index(names, request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Message:
        self._admin(context)
        await self.lifecycle.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Message:
        self._admin(context)
        await self.lifecycle.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


class _AbortError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _refusals(fn: Callable[[Any, Any], Awaitable[Message]]) -> Callable[..., Any]:
    """The method, with domain errors answered as status codes."""

    async def call(request: Any, context: Any) -> Message:
        try:
            return await fn(request, context)
        except _AbortError as exc:
            await context.abort(exc.code, str(exc))
        except ServingError as exc:
            code = code_of(exc)
            await context.abort(code, _message(exc, None, code))
        raise AssertionError("context.abort returned")  # it raises

    return call


def _message(error: ServingError, request_id: str | None, code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.INTERNAL:  # the cause stays in the log, as over HTTP
        return f"the model failed on this request (request id {request_id})"
    details = getattr(error, "details", None) or []
    where = "; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details[:10])
    return f"{error}" + (f" ({where})" if where else "")


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _tensor_metadata(tensor: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
    )


@functools.cache
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("servewell")
    except PackageNotFoundError:
        return "0"


def _reflected_pool() -> Any:
    """The generated modules' own descriptor pool (see serving/grpc/generate.py), with the
    health service's file added, so reflection describes every service served."""
    pool = pb.POOL
    try:
        pool.FindFileByName(health_pb2.DESCRIPTOR.name)
    except KeyError:
        pool.AddSerializedFile(health_pb2.DESCRIPTOR.serialized_pb)
    return pool


class GrpcServer:
    """The gRPC server as the app's lifespan runs it."""

    def __init__(self, settings: Settings, service: GrpcService) -> None:
        self.settings = settings
        self.service = service
        limit = settings.grpc_max_message_bytes or settings.max_body_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        self.health = health.aio.HealthServicer()
        self.port = 0

    async def start(self) -> int | None:
        """Serve; None when the port cannot be bound (logged: HTTP goes on without gRPC)."""
        server = self.server
        server.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=_reflected_pool())
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            log.error(
                "cannot serve gRPC on %s (%s): set SERVEWELL_GRPC_PORT to a free port, or 0 to "
                "turn gRPC off; serving HTTP only",
                address,
                exc,
            )
            return None
        await server.start()
        await self.follow_readiness()
        return self.port

    async def follow_readiness(self) -> None:
        """Health says SERVING exactly when readiness does (the server and the service)."""
        ready = self.service.dataplane.readiness()[0]
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish within ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
