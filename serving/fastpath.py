"""A lean ASGI path for the hot endpoint: ``POST /models/<name>[/versions/<v>]/predict``.

The per-model FastAPI routes document these operations and answer identically, but each
request through the router pays for matching every route, dependency solving and scope
bookkeeping, which costs more than the prediction of a small model. This middleware
recognises the exact predict paths of the served models with one dict lookup and runs the
same data-plane calls directly; anything else goes on to the FastAPI app. Domain errors get
the same responses as through the router (serving.exception_handlers); unexpected ones
propagate to the app's 500 handler.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.dataplane import DataPlane, ServedModel
from serving.disconnect import ClientGoneError, unless_disconnected
from serving.errors import ServingError
from serving.exception_handlers import serving_error_response
from serving.request_context import note_model

_HEADERS = [(b"content-type", b"application/json")]
H = TypeVar("H")


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected before sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def exact_paths(dataplane: DataPlane, prefix: str, operation: str) -> dict[str, ServedModel]:
    """``<prefix>/<name>/versions/<v>/<operation>`` for every served version, and
    ``<prefix>/<name>/<operation>`` for each production one."""
    paths: dict[str, ServedModel] = {}
    for served in dataplane.ready_models():
        name, version = served.key
        paths[f"{prefix}/{name}/versions/{version}/{operation}"] = served
        if dataplane.default_version.get(name) == version:
            paths[f"{prefix}/{name}/{operation}"] = served
    return paths


class PathTable(Generic[H]):
    """Maps each exact path of one operation (``<prefix>/<name>[/versions/<v>]/<operation>``)
    to its served model, plus the object that answers them; refilled when the models change."""

    def __init__(self, prefix: str, operation: str) -> None:
        self.prefix = prefix
        self.operation = operation
        self.handler: H | None = None
        self.paths: dict[str, ServedModel] = {}

    def fill(self, dataplane: DataPlane, handler: H) -> None:
        self.paths = exact_paths(dataplane, self.prefix, self.operation)
        self.handler = handler

    def clear(self) -> None:
        self.paths = {}
        self.handler = None


class PredictFastPath:
    """Serve known predict paths without the router; pass everything else through."""

    def __init__(self, app: ASGIApp, table: PathTable[DataPlane]) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            served = self.table.paths.get(scope["path"])
            dataplane = self.table.handler
            if served is not None and dataplane is not None:
                await self._predict(dataplane, served, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _predict(
        self, dataplane: DataPlane, served: ServedModel, scope: Scope, receive: Receive, send: Send
    ) -> None:
        body = await read_body(receive)
        if body is None:
            return
        note_model(*served.key)  # metrics and logs name the model even if the body is refused
        try:
            payload = await unless_disconnected(receive, dataplane.predict_json(served, body))
        except ClientGoneError:
            return
        except ServingError as exc:
            response = serving_error_response(exc, f"POST {scope['path']}")
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
