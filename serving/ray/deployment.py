"""The servewell app as Ray Serve replicas: ``pip install '.[ray]'``.

Each replica runs the very app of the single-box service (``serving.http.app.create_app``: its
lifespan, fast path, batcher and executor) behind Ray Serve's HTTP proxy through
``serve.ingress``. Ray places the replicas, balances requests and scales them; servewell adds
nothing for distribution. Every replica loads the models from the store path it is given (the
same path on every node: a shared filesystem), follows the production pointer with its own
lifecycle (hot swap on every replica), and names itself in the ``x-servewell-replica`` header
of each response.

Ray is imported lazily: this module can be imported, and its options validated, without it.

    serve run serving/ray/ray-serve.yaml          # or: make serve-ray
    serve deploy serving/ray/ray-serve.yaml       # onto a running cluster (RAY_ADDRESS)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

DEPLOYMENT_NAME = "servewell"
REPLICA_HEADER = b"x-servewell-replica"

# Measured on a 2-core box (bench/RESULTS.md, "Ray Serve"): behind Ray's proxy a one-worker pool per
# replica was no faster than inline, so replicas run batches inline by default: Ray already
# gives each replica its own process, and no process runs outside the CPUs Ray reserves for it.
# ``settings: {inference: pool}`` brings the pool back (big models, large ``rows`` requests).
REPLICA_DEFAULTS: dict[str, Any] = {"inference": "inline", "grpc_port": 0}
"""Inline inference (Ray spreads replicas), and no gRPC port of their own: Ray's proxy serves
HTTP, and replicas sharing a node would share one port."""


class Autoscaling(BaseModel):
    """Ray Serve autoscaling of the replicas (``autoscaling_config``)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas kept running (0 lets the deployment scale to zero)."""
    max_replicas: int = Field(default=4, ge=1)
    """Most replicas Ray may start."""
    target_ongoing_requests: float = Field(default=32.0, gt=0)
    """Requests in flight per replica that Ray aims for when it scales (micro-batching wants
    several in flight: a batch is cut from the requests waiting together)."""

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class RayOptions(BaseModel):
    """Arguments of the application builder (``args:`` in the Serve config file).

    ``settings`` are servewell settings (the ``SERVEWELL_*`` names, lower case, without the
    prefix) given to every replica, e.g. ``store``, ``inference``, ``pool_size``,
    ``max_batch_rows``, ``max_batch_delay_ms``, ``poll_interval_s``. Settings not given come
    from each replica's environment, as for the single-box service.
    """

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict)
    """Servewell settings of every replica (``store`` is made absolute here)."""
    num_replicas: int = Field(default=2, ge=1)
    """Fixed number of replicas (ignored when ``autoscaling`` is given)."""
    autoscaling: Autoscaling | None = None
    """Let Ray scale the replicas between min and max instead of a fixed number."""
    num_cpus: float = Field(default=1.0, gt=0)
    """CPUs Ray reserves for each replica (its pool workers, if any, run within them)."""
    max_ongoing_requests: int = Field(default=256, ge=1)
    """Requests Ray sends to one replica at once before queueing them at the proxy (Ray's
    default, 5, would starve the micro-batcher)."""

    @model_validator(mode="after")
    def _known_settings(self) -> RayOptions:
        unknown = sorted(set(self.settings) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"unknown servewell settings {unknown}")
        return self

    def replica_settings(self) -> dict[str, Any]:
        """What every replica is given: the defaults, then ``settings``, validated here so that a
        mistake fails the deploy rather than every replica. A relative store path is resolved
        against this process's directory (replicas run elsewhere)."""
        values = {**REPLICA_DEFAULTS, **self.settings}
        if "store" in values:
            values["store"] = str(Path(values["store"]).expanduser().resolve())
        Settings(**values)  # raises pydantic's ValidationError, naming the field
        return values

    def deployment_options(self) -> dict[str, Any]:
        """Options of ``Deployment.options``: replicas or autoscaling, CPUs, concurrency."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


def replica_app(settings: dict[str, Any], replica: str) -> FastAPI:
    """The single-box app for one replica, naming the replica on every response."""
    from serving.http.app import create_app

    app = create_app(Settings(**settings))
    app.edge.stamp.append((REPLICA_HEADER, replica.encode("latin-1", "replace")))
    return app


def _deployment() -> Any:
    """The Ray Serve deployment class (built on first use so that ray loads only here)."""
    from ray import serve

    @serve.ingress()
    class Servewell:
        """One replica: the app is built in the replica process, after Ray named it."""

        def __init__(self, settings: dict[str, Any]) -> None:
            self._settings = settings

        def __serve_build_asgi_app__(self) -> FastAPI:
            replica = serve.get_replica_context().replica_id.unique_id
            return replica_app(self._settings, replica)

    return serve.deployment(name=DEPLOYMENT_NAME)(Servewell)


def servewell_app(options: RayOptions | None = None) -> Application:
    """The Ray Serve application: ``serve.run(servewell_app(RayOptions(...)))``."""
    options = options or RayOptions()
    deployment = _deployment().options(**options.deployment_options())
    app: Application = deployment.bind(options.replica_settings())
    return app


def build(args: dict[str, Any]) -> Application:
    """Application builder named by ``import_path`` in the Serve config (``args:`` there)."""
    return servewell_app(RayOptions.model_validate(args))
