"""Domain errors of the serving core. They carry no transport semantics; exception_handlers
maps them to HTTP responses."""

from __future__ import annotations

from dataclasses import dataclass, field


class ServingError(Exception):
    """Base class of every error the serving core raises on purpose."""

    type = "serving_error"
    close = False
    """Whether the connection must close after the answer (a body left half read cannot be
    followed by another request on it)."""


class UnknownModelError(ServingError):
    """No served model has this name."""

    type = "model_not_found"


class UnknownVersionError(ServingError):
    """The model exists but this version is not served."""

    type = "version_not_found"


class ModelUnavailableError(ServingError):
    """The model exists but could not be loaded (failed verification or unpickling)."""

    type = "model_unavailable"


class ExplanationsUnavailableError(ModelUnavailableError):
    """The version can explain, but its explainer could not be built in the worker (e.g. its
    background no longer verifies): a fault of the service, not of the request."""

    type = "explanations_unavailable"


EXPLAIN_FAILED = (
    "this model version's explanations could not be loaded; its predictions still work, and "
    "the cause is in the service log"
)


class NoExperimentError(ServingError):
    """The model exists but runs no traffic experiment (shadow, canary or A/B)."""

    type = "no_experiment"


class NotReadyError(ServingError):
    """The inference pool is not running (starting, restarting a worker, or stopped)."""

    type = "not_ready"


class InferenceError(ServingError):
    """The estimator raised while predicting a batch, or its worker died.

    ``detail`` is what went wrong inside the model (the exception raised in the worker): for
    the service log only, never for the client, to whom it could reveal internals."""

    type = "inference_error"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


PREDICT_FAILED = "the model failed to predict this request"
"""What a client is told when the model raised: the cause goes to the log."""


class RetryableError(ServingError):
    """Temporarily unable to take this request; the same request may succeed shortly.

    ``retry_after`` says in how many seconds a retry is worth trying."""

    type = "unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerLostError(RetryableError):
    """The inference worker running this request's batch died or hung, and the batch had
    already been retried once (a batch that kills workers must not kill them all)."""

    type = "worker_lost"


class OverloadedError(RetryableError):
    """The model's queue is full: the request is shed at once instead of waiting."""

    type = "overloaded"


class DeadlineExceededError(ServingError):
    """The request's deadline passed before its predictions were ready."""

    type = "deadline_exceeded"


class InvalidModelNameError(ServingError):
    """A model name that is not a single safe store path component (e.g. ``..``)."""

    type = "invalid_name"


class ArtifactRefusedError(ServingError):
    """A model version was refused: failed verification (hash, signature), could not be
    loaded, or was trained with another scikit-learn while that is strict."""

    type = "artifact_refused"


class LifecycleConflictError(ServingError):
    """A lifecycle operation that the store's state does not allow (e.g. nothing to roll
    back to)."""

    type = "conflict"


class CaptureOffError(ServingError):
    """Something that needs data capture (feedback labels, captured rows) while it is off."""

    type = "capture_off"


class CaptureUnavailableError(RetryableError):
    """The capture database cannot be reached or written; predictions go on regardless."""

    type = "capture_unavailable"


@dataclass(frozen=True)
class ErrorDetail:
    """One problem with a request: where (path into the body) and what."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"


@dataclass
class InvalidInputError(ServingError):
    """The request body does not match the model's input schema."""

    message: str
    details: list[ErrorDetail] = field(default_factory=list)
    type = "validation_error"

    def __post_init__(self) -> None:
        super().__init__(self.message)


class NotExplainableError(InvalidInputError):
    """Explanations were asked of a model version that has none (its estimator has no exact
    method, or it was trained before explanations existed), or of too many rows."""

    type = "not_explainable"


class MalformedRequestError(InvalidInputError):
    """The body is not valid JSON."""

    type = "malformed_json"


class RefusedError(ServingError):
    """A request refused before any model sees it: a header the service does not take, a
    body over the size limit or too slow to arrive. ``details`` name what was wrong."""

    type = "bad_request"

    def __init__(
        self, message: str, details: list[ErrorDetail] | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.details = details or []
        self.close = close


class BadRequestError(RefusedError):
    """A request header with a value the service does not accept."""


class PayloadTooLargeError(RefusedError):
    """The request body is over the size limit."""

    type = "payload_too_large"


class BodyTimeoutError(RefusedError):
    """The request body did not arrive within the request's deadline."""

    type = "request_timeout"


class UnsupportedMediaError(RefusedError):
    """A prediction body declared as something other than JSON, or compressed."""

    type = "unsupported_media_type"
