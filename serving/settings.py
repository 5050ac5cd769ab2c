"""Service settings, read from the environment with the ``SERVEWELL_`` prefix."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.execution.runtime import RuntimePolicy


def cores() -> int:
    return os.cpu_count() or 1


def default_workers(on_scikit_learn: bool = False) -> int:
    """One server process per core, or one when a served model runs on scikit-learn.

    A server process's event loop (HTTP, validation, JSON, batching) is what saturates first
    with small models: measured on a 2-core box, one process's loop ran at 100 % while its pool
    worker was 7 % busy and the box 36-40 % idle. A second process gave +45 % req/s for iris
    and +49 % for a 100-tree forest (single rows, c=100), +29 % rows/s for 1 000-row forest
    requests, with p50 at c=1 unchanged; see docs/operations.md for the figures and larger
    boxes.

    A model on scikit-learn is the other way round: each call costs a fixed overhead (a 100-tree
    forest: ~4 ms for 1 or 50 rows), so its pool worker saturates first, and the larger the
    batches one worker takes, the more it serves. Two processes halve every batch: the forest
    fell from 10.5k to 7.4k req/s. ``python -m serving`` passes ``on_scikit_learn`` from the
    store at start.
    """
    return 1 if on_scikit_learn else cores()


def default_pool_size(workers: int = 1) -> int:
    """Pool workers per server process: the cores not taken by the server processes' loops,
    shared among them, at least one each. One server process: cores - 1 (on 2 cores one worker
    plus the loop was best: a second worker only competed with the loop); one per core: one
    each, so that model work can still use every core."""
    return max(1, cores() // workers - 1)


CONNECTION_RESERVE_MIN = 128
"""Descriptors kept out of the automatic connection limit at least (a process with a low
limit still needs its pool pipes, shared regions, log and model files)."""


def default_max_connections() -> int:
    """Open connections allowed when ``max_connections`` is unset: the process's descriptor
    limit (``RLIMIT_NOFILE``, soft) less a reserve of an eighth of it, at least
    :data:`CONNECTION_RESERVE_MIN`; 65 536 when the limit is infinite.

    Every connection holds a descriptor. At the limit ``accept`` fails, and new clients wait
    in the kernel's queue until some connection closes, while the pool, which opens
    descriptors for large answers (shared regions), fails too. Refusing connections below
    the limit keeps both working. An eighth leaves room for the rest of the process (23
    descriptors measured at rest with two pool workers) and for bursts of shared regions.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(1, soft - max(CONNECTION_RESERVE_MIN, soft // 8))


class Settings(BaseSettings):
    """Everything the service can be told; each field is ``SERVEWELL_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="SERVEWELL_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    store: Path = Path("models")
    """Root of the model store; the production version of every model in it is served."""

    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default: put a proxy in front to expose it)."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol over gRPC, on the same host, in the same process
    and event loop as HTTP (8001, as Triton and KServe use; 0 turns it off)."""

    grpc_max_message_bytes: int | None = Field(default=None, ge=1)
    """Largest gRPC message received or sent; unset: ``max_body_bytes``."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the service and of uvicorn."""

    access_log: bool = True
    """Log one line per request (``servewell.access``, at ``info`` level: silent at
    ``warning`` and above): request id, method, path, status, latency, and the model, version
    and rows of predictions. Formatted and written by a background thread."""

    loop: Literal["uvloop", "asyncio", "uvloop-libuv-accept"] = "uvloop"
    """Event loop of the server. ``uvloop`` (default): uvloop, with connections accepted as
    asyncio does, every pending one at once (``serving.couplings.uvloop_accept``).
    ``asyncio``: the standard loop (fair too; at c=1 the same or up to 1 ms slower when measured).
    ``uvloop-libuv-accept``: plain uvloop, for comparison only: libuv accepts one connection
    per loop iteration, so under load a burst of connections waits seconds to be accepted."""

    idle_poll_us: int = Field(default=250, ge=0)
    """After its last request in flight, a server process keeps polling its sockets for up to
    this long instead of sleeping, when requests came one at a time and the last within as long
    of the one before (``serving.core.idle_poll``): a client that sends its next request as
    soon as it has the answer finds the CPU awake (iris c=1 p50 255 → 202 µs on a 2-core VM).
    It costs up to this much CPU each time such requests stop coming close together, none while
    any is in flight or under concurrent load. 0: sleep at once."""

    # -- third-party couplings (serving/couplings) --------------------------------------------
    stock_couplings: bool = False
    """Turn off every use of a library's private API (``serving.couplings``): uvicorn's own HTTP
    protocol (no header timeout, head limits or connection limit), plain uvloop accepting,
    scikit-learn forests predicting in two passes. Each coupling already falls back by itself
    when the installed library is not a version it was tested with; this forces it, to rule a
    coupling out when something misbehaves."""

    signing_key: SecretStr | None = None
    """HMAC key of a signed store (the one training used): with it, every manifest must carry
    a matching signature or its model is not served. Set but empty is refused at start (it
    would silently turn signing off)."""

    @field_validator("signing_key")
    @classmethod
    def _signing_key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError(
                "SERVEWELL_SIGNING_KEY is set but empty, which would turn signing off: "
                "set the key the store was signed with, or unset the variable"
            )
        return value

    serve_all_versions: bool = False
    """Serve every published version of each model, not only the production one (or the
    latest, for a model with nothing promoted)."""

    poll_interval_s: float = Field(default=5.0, ge=0)
    """Seconds between checks of the store for a changed production pointer, new and removed
    models; a change is hot-swapped in without dropping requests. 0 disables polling (the admin
    API can still trigger a reload)."""

    keep_previous_versions: int = Field(default=0, ge=0)
    """How many earlier production versions of a model stay loaded after a swap, addressable
    at ``/models/{name}/versions/{v}/predict`` (e.g. 1, for comparison or a rollback that needs
    no load)."""

    admin_token: SecretStr | None = None
    """Bearer token of the admin API (``/admin/...``: reload, promote, rollback, versions).
    Unset (default): the admin API is disabled and answers 404."""

    protect_info: bool = False
    """Put what the service tells about its models behind the admin token: ``GET /models``,
    ``/models/{name}``, ``/models/{name}/drift``, ``/metrics``, the Open Inference Protocol
    model metadata (``GET /v2/models/{name}[/versions/{v}]``), ``/openapi.json``, ``/docs``
    and ``/redoc`` answer 401 without it and 403 with a wrong one; ``/health/ready`` keeps
    answering its status code to anyone, with its details only for the token. Liveness,
    readiness of the protocol and predict and infer stay open. Needs ``admin_token``."""

    strict_sklearn_version: bool = False
    """Refuse a model whose manifest records another scikit-learn version than the one serving
    (default: serve it, with a warning in ``/health/ready`` and ``GET /models/{name}``)."""

    inference: Literal["auto", "pool", "inline"] = "auto"
    """Where batches run: ``pool`` (worker processes: keeps the event loop free whatever the
    runtime) or ``inline`` (a thread in the server process: no extra processes, but a runtime
    that holds the GIL, scikit-learn, shares it with the event loop). ``auto`` (default):
    inline when every production version runs on ONNX Runtime, which releases the GIL, else
    the pool (:mod:`serving.execution.factory`)."""

    # Not default_workers itself: pydantic would pass it the fields read so far.
    workers: int = Field(default_factory=lambda: default_workers(), ge=1)
    """Server processes ``python -m serving`` starts (uvicorn workers sharing the port), each
    with its own inference pool of ``pool_size`` workers. Metrics add up over all of them.
    Default: one per core, or one when a production model runs on scikit-learn
    (:func:`default_workers`)."""

    pool_size: int = Field(
        default_factory=lambda given: default_pool_size(given.get("workers", 1)), ge=1
    )
    """Worker processes in each server process's inference pool (default: the cores left
    after the server processes, shared among them, at least 1: ``max(1, cores // workers -
    1)``; one each with the default ``workers``)."""

    max_batch_rows: int = Field(default=512, ge=1)
    """Largest number of rows cut into one batch (a bigger single request runs alone)."""

    max_batch_delay_ms: float = Field(default=1.0, ge=0)
    """Longest wait for more rows before a partly full batch is sent while the pool is busy.
    A request that finds the pool idle is sent at once."""

    max_request_rows: int = Field(default=10_000, ge=1)
    """Most rows one predict request may carry."""

    max_explain_rows: int = Field(default=100, ge=1)
    """Most rows one request that asks for explanations may carry (explaining a forest costs
    about a quarter of a millisecond per row, many times its prediction)."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Largest request body accepted; bigger bodies get 413 before any parsing."""

    startup_timeout_s: float = Field(default=120.0, gt=0)
    """How long worker processes may take to start and load every model."""

    runtime: Literal["auto", "sklearn"] = "auto"
    """``auto``: ONNX Runtime serves every model whose manifest records an ONNX file that
    passed the parity check at training time, scikit-learn the others. ``sklearn``: scikit-learn
    serves every model."""

    sklearn_models: frozenset[str] = frozenset()
    """Models always served by scikit-learn, as a JSON list: ``'["iris", "churn"]'``."""

    onnx_threads: int | None = Field(default=None, ge=1)
    """Threads each model computes with, under either runtime: intra-op threads per ONNX
    Runtime session, and for scikit-learn the ``n_jobs`` of its estimators and (in pool
    workers) the BLAS/OpenMP threads. Default: the cores left after the event loop, shared
    among the workers of every server process (``max(1, (cores - workers) // (workers *
    pool_size))``; inline: a pool of one), so workers never oversubscribe the box."""

    metrics: bool = True
    """Prometheus metrics at ``GET /metrics`` and input drift tracking (``GET
    /models/{name}/drift``, out-of-range counters, response warnings). Off: none of these."""

    input_warnings: bool = True
    """Predict responses carry a ``warnings`` list naming the features of the request with a
    value outside their training range (only when there is one; needs ``metrics``)."""

    drift_window_rows: int = Field(default=10_000, ge=100)
    """Most recent input rows per model version that ``GET /models/{name}/drift`` compares
    with training."""

    log_format: Literal["auto", "json", "text"] = "auto"
    """``json``: one JSON object per line. ``text``: human-readable lines. ``auto`` (default):
    text when stderr is a terminal (``make serve``), JSON otherwise."""

    metrics_dir: Path | None = None
    """Directory where the server processes share their metrics; ``python -m serving`` sets it
    (a fresh temporary directory) when ``workers`` > 1."""

    worker_hang_timeout_s: float = Field(default=30.0, gt=0)
    """A pool worker busy on one batch for longer than this is killed and replaced; its batch
    is retried once on another worker (a second failure answers 503 with ``Retry-After``)."""

    max_queue_rows: int = Field(default=100_000, ge=1)
    """Rows that may wait for the pool per model version, counting those of admitted requests
    whose bodies are still arriving. A request that would go beyond gets 503 with
    ``Retry-After`` at once (one request alone is always admitted)."""

    request_timeout_s: float = Field(default=10.0, gt=0)
    """Default deadline of a request, from when its headers arrive. A body still not fully
    received by then gets 408 and the connection is closed (slow clients cannot hold the
    server); a prediction not ready by then gets 504 and, if its rows have not been sent to
    a worker yet, they never are."""

    max_request_timeout_s: float = Field(default=60.0, gt=0)
    """Longest deadline a client may ask for with the ``X-Request-Timeout`` header (seconds);
    longer asks are cut to this."""

    retry_after_s: float = Field(default=1.0, gt=0)
    """The ``Retry-After`` of a 503 (queue full, worker lost), rounded up to whole seconds."""

    shutdown_grace_s: int = Field(default=10, ge=0)
    """On SIGTERM or Ctrl-C: how long requests in flight may take to finish after the
    server stops accepting connections; then the pool is shut down and the process exits."""

    timeout_keep_alive_s: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this many seconds."""

    header_timeout_s: float = Field(default=10.0, gt=0)
    """Longest time a client may take to send a request's line and headers: from when it
    connects (and, on a kept-alive connection, from the first byte of each next request).
    Beyond it the connection is closed, with a 408 if part of a request had arrived. Without
    it, a client that opens connections and never finishes their headers (slowloris) holds
    them forever: the request deadline only starts once the headers are in."""

    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line and header lines, in bytes). A bigger one gets 431
    and the connection is closed, as soon as that many bytes have arrived (the head is held
    in memory until it is complete)."""

    max_headers: int = Field(default=100, ge=1)
    """Most header lines in a request; more get 431 and the connection is closed."""

    max_connections: int | None = Field(default=None, ge=1)
    """Most connections open at once in each server process. Beyond it a new connection gets
    a 503 (``Retry-After``) and is closed at once, while the open ones are served as before.
    Unset (default): sized from the process's descriptor limit (``ulimit -n``) less a reserve
    (:func:`default_max_connections`), so that idle connections cannot use up the
    descriptors the process needs to accept and to serve."""

    limit_concurrency: int | None = Field(default=None, ge=1)
    """Most connections (plus requests) served at once; beyond it uvicorn answers 503 at once.
    Unset: no limit (admission per model bounds the work instead)."""

    backlog: int = Field(default=4096, ge=1)
    """Connections the kernel may queue before the server accepts them."""

    max_inflight_body_bytes: int | None = Field(default=64 * 1024 * 1024, ge=1)
    """Declared body bytes of predict requests handled at once. Beyond it a request gets 503
    with ``Retry-After`` before its body is read or parsed, so that overload from big bodies
    (parsing is event-loop work) is shed cheaply. Unset (``null``): no limit. The default,
    64 MiB, is about 0.7 s of the loop's parsing (~90 MB/s of 30-feature rows on a 2-core
    box): eight clients sending 10 000-row requests (2.4 MB each) fit, where 8 MiB shed
    nine in ten of them on a box that was not saturated."""

    # -- data capture and feedback (serving/capture) -------------------------------------------
    capture: str = "none"
    """Which models' answered requests are kept in the capture database: ``none`` (default),
    ``all``, or a comma list of model names (``iris,churn``). Each captured row keeps the
    request id, row, model, version, time (UTC), the validated inputs by feature name, the
    prediction (and probabilities when the request asked for them), latency and transport.
    Written by a background thread; never slows or fails a prediction beyond one queue append."""

    capture_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of requests captured (0-1), each request kept whole or not at all."""

    capture_url: str | None = None
    """Database of captured predictions and feedback labels: ``sqlite:///path`` or
    ``postgresql://user:password@host/db`` (psycopg 3; for several server processes or Ray
    replicas on several machines). Unset: a SQLite file beside the model store
    (``<store>.capture.sqlite``, e.g. ``models.capture.sqlite``)."""

    capture_queue_rows: int = Field(default=100_000, ge=1)
    """Rows waiting to be written at most; beyond it rows are dropped and counted
    (``servewell_capture_dropped_total``), so a slow or unreachable database costs bounded
    memory and nothing else."""

    capture_max_age_days: float | None = Field(default=30.0, gt=0)
    """Captured rows older than this are pruned (hourly, in the background). Unset: kept."""

    capture_max_rows_per_model: int | None = Field(default=1_000_000, ge=1)
    """Only the newest this many captured rows of each model are kept. Unset: no limit."""

    feedback_token: SecretStr | None = None
    """When set, ``POST /models/{name}/feedback`` needs ``Authorization: Bearer <token>``, so
    that only the application can post labels. Unset: anyone who can reach the service may."""

    feedback_max_items: int = Field(default=1000, ge=1)
    """Most labels in one feedback request."""

    quality_last_n: int = Field(default=1000, ge=1)
    """Live quality (``GET /models/{name}/quality``) judges the primary metric over this many
    most recent labelled rows of a version, beside the 1 h and 24 h windows."""

    quality_min_rows: int = Field(default=100, ge=1)
    """Fewest labelled rows before a version may be flagged ``degraded``."""

    quality_tolerance: float = Field(default=0.05, ge=0)
    """A version is ``degraded`` when its live primary metric is worse than the holdout metric
    of its manifest by more than this (absolute, in the metric's units)."""

    quality_interval_s: float = Field(default=60.0, ge=0)
    """Seconds between computations of live quality for the metrics and the degraded log
    line (0: only on request)."""

    shadow_queue_rows: int = Field(default=1_000, ge=1)
    """Rows that may wait for a shadow version (traffic policy ``shadow``). A request that
    would go beyond is not shadowed (counted as skipped): a slow or failing shadow falls
    behind instead of holding the pool."""

    guard_interval_s: float = Field(default=5.0, ge=0)
    """Seconds between checks of the canary guards of traffic policies that set one (0: never
    checked)."""

    gc_freeze: bool = True
    """Once the app is built, move every object alive then (about 70 000: modules, routes,
    schemas) out of the garbage collector's reach (``gc.freeze``), so that full collections
    stop walking them: under load they stalled the event loop for 0.1-0.3 s every few seconds
    (2-core box), delaying every request in flight. Applies to ``python -m serving``."""

    gc_young_threshold: int = Field(default=10_000, ge=1)
    """Allocations (net of frees) of objects the garbage collector tracks between two
    collections of its youngest generation (``gc.set_threshold``; Python's own is 700). Each
    request in flight holds such objects (its task, futures, dicts): with Python's threshold,
    iris single rows at c=100 set off a collection about every 50 requests, 0.4 ms each, 4-5 %
    of the event loop's time (2-core box). Garbage held in reference cycles waits at most this
    many allocations longer. Applies to ``python -m serving``."""

    @field_validator("capture")
    @classmethod
    def _capture_names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",")]
        if any(not n for n in names):
            raise ValueError("capture is none, all, or a comma list of model names")
        return ",".join(names)

    @property
    def capture_models(self) -> frozenset[str] | None:
        """Names of the models captured; None: every model (``all``); empty: none."""
        if self.capture == "all":
            return None
        if self.capture == "none":
            return frozenset()
        return frozenset(self.capture.split(","))

    @model_validator(mode="after")
    def _protected_info_needs_a_token(self) -> Settings:
        if self.protect_info and not self.admin_enabled:
            raise ValueError(
                "protect_info needs admin_token: without it the protected endpoints would "
                "answer no one"
            )
        return self

    def runtime_policy(self) -> RuntimePolicy:
        """The runtime choice handed to every process that loads models."""
        # Per server process: what its loop leaves of its share of the cores.
        computing = self.workers * (self.pool_size if self.inference == "pool" else 1)
        threads = self.onnx_threads or max(1, (cores() - self.workers) // computing)
        return RuntimePolicy(
            prefer_onnx=self.runtime == "auto",
            sklearn_models=self.sklearn_models,
            onnx_threads=threads,
        )

    @property
    def admin_enabled(self) -> bool:
        """True when an admin token is set (the admin API answers 404 otherwise)."""
        return self.admin_token is not None and bool(self.admin_token.get_secret_value())

    @property
    def signing_key_bytes(self) -> bytes | None:
        if self.signing_key is None:
            return None
        return self.signing_key.get_secret_value().encode("utf-8")
