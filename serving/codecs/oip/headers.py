"""The HTTP headers of Open Inference Protocol inference: whether a request carries binary
tensor data (Triton's binary data extension), and the headers of a response that does."""

from __future__ import annotations

from collections.abc import Iterable

from serving.codecs.oip.tensors import HEADER_LENGTH
from serving.core.errors import MalformedRequestError

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
