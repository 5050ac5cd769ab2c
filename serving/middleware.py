"""A pure ASGI middleware that caps request bodies before anything parses them.

It rejects a too-large ``Content-Length`` at once, and counts the bytes of every body chunk
as they arrive, so chunked bodies without a length are capped too.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.exception_handlers import error_body, is_v2, v2_error_body


class _BodyTooLargeError(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 with the service's error shape when a body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # the server rejects a malformed length itself
                if too_large:
                    await self._reject(scope, send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        message = f"the request body exceeds the limit of {self.max_bytes} bytes"
        if is_v2(scope["path"]):  # the Open Inference Protocol's error shape
            body = v2_error_body(message)
        else:
            body = error_body("payload_too_large", message)
        await send_json_and_close(send, 413, body)


async def send_json_and_close(send: Send, status: int, body: bytes) -> None:
    """Answer with a JSON error and close the connection (its body may be half read)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
