"""Every use of a third-party library's private API, in one place.

Each coupling names the library, the private names it relies on and the versions it was tested
with. With any other installed version, or with ``SERVEWELL_STOCK_COUPLINGS`` set, the caller
gets the library's stock behaviour instead and one WARNING names the coupling: the service
still works, only without what the coupling adds. docs/design.md ("Third-party couplings")
says why each one pays.

* ``uvicorn-http`` (:mod:`serving.couplings.uvicorn_http`): uvicorn's ``HttpToolsProtocol``,
  for the limits on connections and request heads, and one write per response;
* ``uvloop-accept`` (:mod:`serving.couplings.uvloop_accept`): ``uvloop.Loop`` with a listener
  that accepts every pending connection at once, one per server process;
* ``sklearn-forest`` (:mod:`serving.couplings.sklearn_forest`): scikit-learn's
  ``sklearn.ensemble._forest.ForestClassifier``, to predict and give probabilities in one pass.

Nothing here imports the coupled libraries at module level: each is imported by the coupling
that uses it, when it is chosen.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata

log = logging.getLogger("servewell")

STOCK_ENV = "SERVEWELL_STOCK_COUPLINGS"
"""The environment variable of ``Settings.stock_couplings``: read here directly, because the
inference pool's worker processes use couplings without building settings."""

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class Coupling:
    name: str
    library: str
    """The distribution name, as ``pip list`` shows it."""
    private: str
    """The private names relied on."""
    tested: frozenset[str]
    """Versions of ``library`` the coupling was tested with."""
    fallback: str
    """What runs instead (the library's stock behaviour)."""


UVICORN_HTTP = Coupling(
    "uvicorn-http",
    "uvicorn",
    "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol (subclassed)",
    frozenset({"0.55.0"}),
    "uvicorn's own HttpToolsProtocol: no header timeout, header size and count limits, or "
    "connection limit; two writes per response",
)
UVLOOP_ACCEPT = Coupling(
    "uvloop-accept",
    "uvloop",
    "uvloop.Loop.create_server replaced (the loop's accept path)",
    frozenset({"0.23.0"}),
    "plain uvloop: libuv accepts one connection per loop iteration",
)
SKLEARN_FOREST = Coupling(
    "sklearn-forest",
    "scikit-learn",
    "sklearn.ensemble._forest.ForestClassifier (and its predict)",
    frozenset({"1.9.1"}),
    "predict and predict_proba called separately (two passes over the trees)",
)
ALL = (UVICORN_HTTP, UVLOOP_ACCEPT, SKLEARN_FOREST)

_warned: set[str] = set()


def stock_forced(stock: bool | None = None) -> bool:
    """True when every coupling must fall back: ``stock`` if given (from settings), else
    ``SERVEWELL_STOCK_COUPLINGS`` from the environment."""
    if stock is not None:
        return stock
    return os.environ.get(STOCK_ENV, "").strip().lower() in _TRUE


def installed(library: str) -> str | None:
    """The installed version of ``library``, None when it is not installed."""
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return None


def enabled(coupling: Coupling, stock: bool | None = None) -> bool:
    """True when ``coupling`` may be used: not forced to stock, and the installed version is
    one tested. Otherwise False, with one WARNING per coupling and process naming it."""
    if stock_forced(stock):
        reason = f"{STOCK_ENV} is set"
    else:
        version = installed(coupling.library)
        if version in coupling.tested:
            return True
        tested = ", ".join(sorted(coupling.tested))
        reason = f"{coupling.library} {version} is not one servewell was tested with ({tested})"
    if coupling.name not in _warned:
        _warned.add(coupling.name)
        log.warning(
            "coupling %s (%s) off: %s; falling back to %s",
            coupling.name,
            coupling.private,
            reason,
            coupling.fallback,
        )
    return False
