"""The two services every gRPC server is expected to answer besides its own: the standard health
service (``grpc.health.v1.Health``: ``Check`` and ``Watch``) and server reflection
(``grpc.reflection.v1alpha.ServerReflection``, answered by grpcio-reflection's servicer over a
descriptor pool), as :class:`serving.grpc.calls.Method` handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from serving.grpc.calls import Call, GrpcError, Method, Status

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
_Response = health_pb2.HealthCheckResponse
SERVING, NOT_SERVING, _UNKNOWN = _Response.SERVING, _Response.NOT_SERVING, _Response.SERVICE_UNKNOWN


def parsed(kind: type[Message], raw: bytes) -> Any:
    try:
        return kind.FromString(raw)
    except DecodeError:
        raise GrpcError(Status.INVALID_ARGUMENT, f"not a valid {kind.__name__}") from None


class Health:
    """Each service's status (``""``: the server's), as the server sets it."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.changed = asyncio.Event()

    def set(self, service: str, status: int) -> None:
        if self.statuses.get(service) != status:
            self.statuses[service] = status
            self.changed.set()
            self.changed = asyncio.Event()

    def methods(self) -> dict[str, Method]:
        return {
            f"/{HEALTH}/Check": Method(unary=self.check),
            f"/{HEALTH}/Watch": Method(streaming=self.watch),
        }

    async def check(self, call: Call, raw: bytes) -> bytes:
        service = parsed(health_pb2.HealthCheckRequest, raw).service
        if (status := self.statuses.get(service)) is None:
            raise GrpcError(Status.NOT_FOUND, f"unknown service {service!r}")
        answer: bytes = _Response(status=status).SerializeToString()
        return answer

    async def watch(self, call: Call, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The status now, then each change, until the client leaves or the server stops."""
        service = ""
        async for raw in requests:
            service = parsed(health_pb2.HealthCheckRequest, raw).service
            break
        sent = None
        while True:
            status = self.statuses.get(service, _UNKNOWN)
            if status != sent:
                sent = status
                yield _Response(status=status).SerializeToString()
            await self.changed.wait()


def reflection_method(names: Iterable[str], pool: Any) -> dict[str, Method]:
    """Server reflection over ``pool``, listing ``names``. grpcio-reflection's servicer is
    imported at the first call: it imports grpcio, which the server itself does not need."""
    names = list(names)

    async def info(call: Call, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        from grpc_reflection.v1alpha import reflection

        servicer = reflection.ReflectionServicer(names, pool=pool)
        async for raw in requests:
            request = parsed(reflection_pb2.ServerReflectionRequest, raw)
            for response in servicer.ServerReflectionInfo(iter([request]), None):
                yield response.SerializeToString()

    return {f"/{REFLECTION}/ServerReflectionInfo": Method(streaming=info)}
