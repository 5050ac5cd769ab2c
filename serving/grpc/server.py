"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` served by the
service's own HTTP/2 transport (:mod:`serving.grpc.http2`) in its event loop, over the same
request path, batchers and pool as HTTP, with the standard health service and reflection.

``ModelInfer`` takes and gives raw bytes: the codec (:mod:`serving.grpc.codec`) parses and
writes the messages inside :func:`serving.core.predictor.answer`, as the HTTP codecs do bodies,
so experiments, capture and admission apply alike. Every other method uses the generated
messages. Domain errors become gRPC status codes (:data:`CODES`) with the same messages as over
HTTP; nothing a client sends ends as ``UNKNOWN`` or ``INTERNAL`` (only a model that raises, or a
fault of the service itself, is ``INTERNAL``). The client's deadline becomes the request's
deadline.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from serving.codecs.oip.service import REPOSITORY_EXTENSION, SERVER_NAME, InferenceService
from serving.core.admission import deadline_in
from serving.core.context import CURRENT, RequestContext, new_request_id, valid_request_id
from serving.core.dataplane import DataPlane
from serving.core.errors import (
    ArtifactRefusedError,
    CaptureOffError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    InvalidModelNameError,
    LifecycleConflictError,
    ModelUnavailableError,
    NoExperimentError,
    NotReadyError,
    OverloadedError,
    RefusedError,
    RetryableError,
    ServingError,
    UnknownModelError,
    UnknownVersionError,
)
from serving.core.idle_poll import IdlePoll
from serving.core.lifecycle import Lifecycle
from serving.core.predictor import answer
from serving.grpc.calls import Call, GrpcError, Method, Status
from serving.grpc.codec import GrpcCodec
from serving.grpc.generated import inference_pb2 as pb
from serving.grpc.http2 import Http2Server
from serving.grpc.standard import (
    HEALTH,
    NOT_SERVING,
    REFLECTION,
    SERVING,
    Health,
    parsed,
    reflection_method,
)
from serving.observe.observability import Observability
from serving.settings import Settings
from serving.store import parse_version

log = logging.getLogger("servewell.grpc")

SERVICE = "inference.GRPCInferenceService"
INFER_METHOD = f"/{SERVICE}/ModelInfer"

CODES: list[tuple[type[ServingError], Status]] = [
    (InvalidInputError, Status.INVALID_ARGUMENT),
    (InvalidModelNameError, Status.INVALID_ARGUMENT),
    (RefusedError, Status.INVALID_ARGUMENT),
    (UnknownModelError, Status.NOT_FOUND),
    (UnknownVersionError, Status.NOT_FOUND),
    (NoExperimentError, Status.NOT_FOUND),
    (CaptureOffError, Status.FAILED_PRECONDITION),
    (OverloadedError, Status.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, Status.DEADLINE_EXCEEDED),
    (ArtifactRefusedError, Status.FAILED_PRECONDITION),
    (LifecycleConflictError, Status.FAILED_PRECONDITION),
    (ModelUnavailableError, Status.UNAVAILABLE),
    (NotReadyError, Status.UNAVAILABLE),
    (RetryableError, Status.UNAVAILABLE),
    (InferenceError, Status.INTERNAL),
]
"""Domain error -> status code, the first class that matches (subclasses before bases)."""


def code_of(error: ServingError) -> Status:
    for kind, code in CODES:
        if isinstance(error, kind):
            return code
    return Status.INTERNAL


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

    def methods(self) -> dict[str, Method]:
        def unary(fn: Callable[[Any, Call], Awaitable[Message]], request: type[Message]) -> Method:
            return Method(unary=_messages(fn, request))

        methods = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest),
            # Bytes in and out: the codec parses and writes the messages.
            "ModelInfer": Method(unary=self.model_infer),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": unary(self.repository_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": unary(self.repository_unload, pb.RepositoryModelUnloadRequest),
        }
        return {f"/{SERVICE}/{name}": method for name, method in methods.items()}

    # -- health and metadata -------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, call: Call) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, call: Call) -> Message:
        return pb.ServerReadyResponse(ready=self.dataplane.readiness()[0])

    async def model_ready(self, request: pb.ModelReadyRequest, call: Call) -> Message:
        try:
            self._resolve(request.name, request.version)
        except (UnknownModelError, UnknownVersionError, ModelUnavailableError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest, call: Call) -> Message:
        extensions = [REPOSITORY_EXTENSION] if self.settings.admin_enabled else []
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_package_version(), extensions=extensions
        )

    async def model_metadata(self, request: pb.ModelMetadataRequest, call: Call) -> Message:
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

    async def model_infer(self, call: Call, body: bytes) -> bytes:
        started = time.perf_counter()
        given = call.metadata.get("x-request-id")
        request_id = given if given and valid_request_id(given.encode()) else new_request_id()
        ctx = RequestContext(request_id, started=started)
        CURRENT.set(ctx)
        settings = self.settings
        seconds = settings.request_timeout_s if call.timeout_s is None else call.timeout_s
        ctx.deadline = deadline_in(min(seconds, settings.max_request_timeout_s))
        call.trailers.append(("x-request-id", request_id))
        code = Status.OK
        try:
            request = self.codec.parse(body)
            served = self._resolve(request.model_name, request.model_version)
            routed = not request.model_version and bool(self.dataplane.registry.routes)
            payload, _ = await answer(self.codec, self.dataplane, served, body, (), ctx, routed)
            call.trailers.append(("x-model-version", ctx.version))
            return payload
        except ServingError as exc:
            code = code_of(exc)
            raise GrpcError(code, _message(exc, request_id, code)) from None
        except Exception:
            code = Status.INTERNAL
            log.exception("unexpected error in ModelInfer")
            raise GrpcError(code, f"internal error (request id {request_id})") from None
        finally:
            self._record(ctx, code, time.perf_counter() - started)

    def _record(self, ctx: RequestContext, status: int, seconds: float) -> None:
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

    def _admin(self, call: Call) -> None:
        secret = self.settings.admin_token
        if secret is None:
            raise GrpcError(Status.PERMISSION_DENIED, "the admin API is disabled")
        given = call.metadata.get("authorization", "")
        if not given.startswith("Bearer "):
            raise GrpcError(Status.UNAUTHENTICATED, "needs authorization: Bearer <token>")
        token = given.removeprefix("Bearer ").encode()
        if not hmac.compare_digest(token, secret.get_secret_value().encode()):
            raise GrpcError(Status.PERMISSION_DENIED, "the admin token is not valid")

    async def repository_index(self, request: pb.RepositoryIndexRequest, call: Call) -> Message:
        self._admin(call)
        names = self.lifecycle.store.names()
        entries = self.inference.repository_index(names, request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, call: Call) -> Message:
        self._admin(call)
        await self.lifecycle.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, call: Call
    ) -> Message:
        self._admin(call)
        await self.lifecycle.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _messages(fn: Callable[[Any, Call], Awaitable[Message]], kind: type[Message]) -> Any:
    """The method on bytes: its request parsed, domain errors answered as status codes."""

    async def unary(call: Call, raw: bytes) -> bytes:
        try:
            return (await fn(parsed(kind, raw), call)).SerializeToString()
        except ServingError as exc:
            code = code_of(exc)
            raise GrpcError(code, _message(exc, None, code)) from None

    return unary


def _message(error: ServingError, request_id: str | None, code: Status) -> str:
    if code is Status.INTERNAL:  # the cause stays in the log, as over HTTP
        return f"the model failed on this request (request id {request_id})"
    details = getattr(error, "details", None) or []
    where = "; ".join(f"{'.'.join(map(str, d.loc))}: {d.msg}" for d in details[:10])
    return f"{error}" + (f" ({where})" if where else "")


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

    def __init__(
        self, settings: Settings, service: GrpcService, idle: IdlePoll | None = None
    ) -> None:
        self.settings = settings
        self.service = service
        self.health = Health()
        methods = service.methods() | self.health.methods()
        names = (SERVICE, HEALTH, REFLECTION)
        methods |= reflection_method(names, _reflected_pool())
        limit = settings.grpc_max_message_bytes or settings.max_body_bytes
        self.server = Http2Server(methods, limit, idle=idle)
        self.port = 0

    async def start(self) -> int | None:
        """Serve; None when the port cannot be bound (logged: HTTP goes on without gRPC)."""
        settings = self.settings
        address = f"{settings.host}:{settings.grpc_port}"
        try:
            # Every server process serves the port when there are several.
            shared = settings.workers > 1
            self.port = await self.server.start(settings.host, settings.grpc_port, shared)
        except OSError as exc:
            log.error(
                "cannot serve gRPC on %s (%s): set SERVEWELL_GRPC_PORT to a free port, or 0 to "
                "turn gRPC off; serving HTTP only",
                address,
                exc,
            )
            return None
        await self.follow_readiness()
        return self.port

    async def follow_readiness(self) -> None:
        """Health says SERVING exactly when readiness does (the server and the service)."""
        status = SERVING if self.service.dataplane.readiness()[0] else NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish within ``grace_s``."""
        for name in ("", SERVICE):
            self.health.set(name, NOT_SERVING)
        await self.server.stop(grace_s)
