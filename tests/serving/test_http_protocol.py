"""The head-holding transport under uvicorn's protocol: one write per small response, and a
held head never left behind. (Every integration test runs the real server on it too.)"""

from __future__ import annotations

import asyncio
from typing import Any

from serving.http_protocol import _JOIN_LIMIT, _HeadHolding

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """Records what reaches the socket's transport."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.calls.append(("writelines", list(chunks)))

    def close(self) -> None:
        self.calls.append(("close", None))

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _holding() -> tuple[_HeadHolding, Recording, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    real = Recording()
    return _HeadHolding(real, loop), real, loop  # type: ignore[arg-type]


def test_head_and_small_body_go_out_in_one_write() -> None:
    transport, real, loop = _holding()
    transport.write(HEAD)
    assert real.calls == []
    transport.write(b"{}")
    assert real.calls == [("write", HEAD + b"{}")]
    loop.close()


def test_a_head_without_its_body_goes_out_at_the_end_of_the_loop_iteration() -> None:
    transport, real, loop = _holding()

    async def only_head() -> None:
        transport.write(HEAD)
        await asyncio.sleep(0)  # the flush was scheduled before this task resumes
        assert real.calls == [("write", HEAD)]

    loop.run_until_complete(only_head())
    loop.close()


def test_interim_responses_and_bodies_are_not_held() -> None:
    transport, real, loop = _holding()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    transport.write(b"chunk")
    assert real.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n"), ("write", b"chunk")]
    loop.close()


def test_close_sends_a_held_head_first() -> None:
    transport, real, loop = _holding()
    transport.write(HEAD)
    transport.close()
    assert real.calls == [("write", HEAD), ("close", None)]
    loop.close()


def test_big_bodies_are_not_copied() -> None:
    transport, real, loop = _holding()
    body = b"x" * (_JOIN_LIMIT + 1)
    transport.write(HEAD)
    transport.write(body)
    assert real.calls == [("writelines", [HEAD, body])]
    assert transport.get_extra_info("socket") == "info:socket"  # the rest passes through
    loop.close()
