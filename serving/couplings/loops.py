"""uvicorn's ``loop`` for each ``SERVEWELL_LOOP``, with the ``uvloop-accept`` coupling gated.

Kept apart from :mod:`serving.couplings.uvloop_accept` so that choosing a loop imports no uvloop.
"""

from __future__ import annotations

from serving.couplings import UVLOOP_ACCEPT, enabled

_GREEDY = "serving.couplings.uvloop_accept:GreedyAcceptLoop"


def loop_setting(loop: str, stock: bool | None = None) -> str:
    """uvicorn's ``loop`` option for the ``SERVEWELL_LOOP`` value ``loop``: ``uvloop`` is the
    greedy-accept loop when the coupling is on, else plain uvloop."""
    if loop == "uvloop":
        return _GREEDY if enabled(UVLOOP_ACCEPT, stock) else "uvloop"
    if loop == "uvloop-libuv-accept":
        return "uvloop"
    return "asyncio"
