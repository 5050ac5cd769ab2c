"""A lean ASGI path for ``POST /v2/models/<name>[/versions/<v>]/infer`` (Open Inference
Protocol), like serving.fastpath for the typed predict paths: one dict lookup recognises the
exact infer paths of the served models, and the same calls as the documented routes in
serving.routes.v2 answer without the router. Anything else goes on to the FastAPI app.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.dataplane import ServedModel
from serving.disconnect import ClientGoneError, unless_disconnected
from serving.errors import MalformedRequestError, ServingError
from serving.exception_handlers import v2_serving_error_response
from serving.fastpath import PathTable, read_body
from serving.oip.service import InferenceService
from serving.oip.tensors import HEADER_LENGTH
from serving.request_context import note_model

_HEADER = HEADER_LENGTH.encode()


def infer_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The JSON header length of a binary request (None: all JSON); refuses compression."""
    length: str | None = None
    for key, value in headers:
        if key == _HEADER:
            length = value.decode("latin-1")
        elif key == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            raise MalformedRequestError(
                f"Content-Encoding {value.decode('latin-1')[:20]!r} is not supported; "
                "send the request uncompressed"
            )
    return length


def response_headers(length: int, json_length: int | None) -> list[tuple[bytes, bytes]]:
    if json_length is None:
        return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    return [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(length).encode()),
        (_HEADER, str(json_length).encode()),
    ]


class InferFastPath:
    """Serve known infer paths without the router; pass everything else through."""

    def __init__(self, app: ASGIApp, table: PathTable[InferenceService]) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            served = self.table.paths.get(scope["path"])
            service = self.table.handler
            if served is not None and service is not None:
                await self._infer(service, served, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _infer(
        self,
        service: InferenceService,
        served: ServedModel,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        body = await read_body(receive)
        if body is None:
            return
        note_model(*served.key)  # metrics and logs name the model even if the body is refused
        try:
            payload, json_length = await unless_disconnected(
                receive, service.infer(served, body, infer_headers(scope["headers"]))
            )
        except ClientGoneError:
            return
        except ServingError as exc:
            response = v2_serving_error_response(exc, f"POST {scope['path']}")
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": response_headers(len(payload), json_length),
            }
        )
        await send({"type": "http.response.body", "body": payload})
