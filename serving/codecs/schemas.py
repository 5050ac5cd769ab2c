"""Request and response models; per-model request models are built from a manifest.

A model's request accepts ``{"instances": [{feature: value, ...}, ...]}`` or the positional
``{"rows": [[...], ...]}`` in manifest feature order. Field types follow the feature kinds
(numbers must be finite JSON numbers, integers whole JSON numbers (49 or 49.0, not 49.5),
booleans JSON true/false, categorical values one of the training categories), unknown fields
are rejected, and each field documents its training range and carries an example from the
training data.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    create_model,
    model_validator,
)
from typing_extensions import TypedDict

from serving.store import Feature, FeatureKind, Manifest, Task

# Integers travel as float64; beyond 2**53 they would silently lose precision.
_MAX_EXACT_INT = 2**53


def _describe(feature: Feature) -> str:
    parts = [f"{feature.kind.value} feature"]
    if feature.kind == FeatureKind.CATEGORICAL:
        parts.append(f"one of {len(feature.categories or [])} training categories")
    elif feature.min is not None and feature.max is not None:
        parts.append(f"training range [{feature.min:g}, {feature.max:g}]")
        if feature.mean is not None:
            parts.append(f"mean {feature.mean:g}")
    if feature.nullable:
        parts.append("null allowed (missing value)")
    return "; ".join(parts)


def _whole(value: Any) -> Any:
    """Checks the raw JSON value, before it becomes a float: a JSON integer beyond 2**53
    would otherwise round into range; a float must have no fractional part."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXACT_INT:
        raise ValueError(f"Input should be between -{_MAX_EXACT_INT} and {_MAX_EXACT_INT}")
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise ValueError("Input should be a whole number")
    return value


def feature_type(feature: Feature) -> Any:
    """The pydantic type of one feature value (strict: no coercion from other JSON types)."""
    kind = feature.kind
    examples = [feature.example] if feature.example is not None else None
    info = Field(description=_describe(feature), examples=examples)
    base: Any
    if kind == FeatureKind.NUMERIC:
        base = Annotated[float, Strict(), Field(allow_inf_nan=False)]
    elif kind == FeatureKind.INTEGER:
        # Like MLServer and KServe, which cast to arrays, and like JSON Schema's own
        # "integer" (1.0 is one): a whole number written 49.0 is 49; 49.5 is refused.
        base = Annotated[
            float,
            Strict(),
            Field(allow_inf_nan=False, ge=-_MAX_EXACT_INT, le=_MAX_EXACT_INT),
            BeforeValidator(_whole),
            WithJsonSchema(
                {"type": "integer", "minimum": -_MAX_EXACT_INT, "maximum": _MAX_EXACT_INT}
            ),
        ]
    elif kind == FeatureKind.BOOLEAN:
        base = Annotated[bool, Strict()]
    else:
        base = Literal.__getitem__(tuple(feature.categories or ()))
    if feature.nullable:
        base = base | None
    return Annotated[base, info]


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)


class PredictRequestBase(BaseModel):
    """Shared shape of every predict request (subclassed per model)."""

    model_config = ConfigDict(extra="forbid")

    return_probabilities: bool = Field(
        default=False,
        strict=True,
        description="Also return the probability of every class (classifiers only).",
    )
    explain: Annotated[bool, Strict()] | Literal["all"] = Field(
        default=False,
        description="Also return each row's exact feature contributions: `true` for the "
        'predicted class (or a regressor\'s value), `"all"` for every class. See '
        "`explanations` in the response.",
    )

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        has_instances = getattr(self, "instances", None) is not None
        has_rows = getattr(self, "rows", None) is not None
        if has_instances == has_rows:
            raise ValueError("give exactly one of 'instances' (records) or 'rows' (positional)")
        return self


def schema_title(manifest: Manifest) -> str:
    """The OpenAPI name stem of a model version's request schemas, e.g. ``BreastCancerV1``."""
    return f"{_title(manifest.name)}V{manifest.version}"


def build_request_model(
    manifest: Manifest, max_rows: int, title: str | None = None
) -> type[PredictRequestBase]:
    """The request model of one model version, named ``<title>PredictRequest`` (default title:
    :func:`schema_title`) in the OpenAPI schema."""
    title = title or schema_title(manifest)
    fields = {f.name: feature_type(f) for f in manifest.features}
    make_typed_dict: Any = TypedDict  # a TypedDict built at run time, from the manifest
    instance: Any = make_typed_dict(f"{title}Instance", fields)
    instance.__pydantic_config__ = ConfigDict(extra="forbid")
    row: Any = tuple.__class_getitem__(tuple(fields.values()))
    example: dict[str, Any] = {f.name: f.example for f in manifest.features}
    names = ", ".join(manifest.feature_names)
    model = create_model(
        f"{title}PredictRequest",
        __base__=PredictRequestBase,
        __doc__=f"Rows to predict with {manifest.name} v{manifest.version}.",
        # Not nullable: a request gives one of the two (the schema says so with oneOf).
        instances=(
            list[instance],
            Field(
                default=None,
                min_length=1,
                max_length=max_rows,
                description="Rows as records: one object per row, every feature by name.",
            ),
        ),
        rows=(
            list[row],
            Field(
                default=None,
                min_length=1,
                max_length=max_rows,
                description=f"Rows as arrays, values in feature order: {names}.",
            ),
        ),
    )

    def exactly_one_form(schema: dict[str, Any]) -> None:
        for key in ("instances", "rows"):
            schema["properties"][key].pop("default", None)
        schema["oneOf"] = [{"required": ["instances"]}, {"required": ["rows"]}]
        if manifest.task != Task.CLASSIFICATION:  # refused for a regressor: say so
            schema["properties"]["return_probabilities"]["enum"] = [False]
        schema["examples"] = [{"instances": [example]}]

    model.model_config["json_schema_extra"] = exactly_one_form
    model.model_rebuild(force=True)
    return model


class OutputExplanation(BaseModel):
    """Why a row got one output: ``base`` plus the sum of ``contributions`` is the output, in
    the row's ``space``."""

    class_: str | int | float | bool | None = Field(
        default=None,
        alias="class",
        description="The class these numbers explain (classifiers only).",
    )
    base: float = Field(description="The expected output over the training data.")
    contributions: dict[str, float] = Field(
        description="Every input feature's exact part of the output, by feature name "
        "(columns made from one feature, such as one-hot categories, summed back to it)."
    )


class RowExplanation(BaseModel):
    space: Literal["probability", "log-odds", "logit", "value"] = Field(
        description="What the numbers add up to: the class probability, its log-odds (a binary "
        "classifier's margin), a multi-class model's softmax logit, or a regressor's value."
    )
    outputs: list[OutputExplanation] = Field(
        description='The predicted class (or the value), or every class with `"all"`.'
    )


class PredictResponse(BaseModel):
    """What a predict call returns (documented; built without a validation pass)."""

    model: str = Field(description="Model name.")
    version: int = Field(description="Model version that made the predictions.")
    predictions: list[str | int | float | bool] = Field(
        description="One per row: the class label as trained, or the predicted value."
    )
    probabilities: list[dict[str, float]] | None = Field(
        default=None,
        description="Classifiers, when asked: one object per row mapping class label to "
        "probability.",
    )
    warnings: list[str] | None = Field(
        default=None,
        description="Present when some input value lies outside its feature's training range: "
        "one message per such feature (the prediction is made anyway, but may be unreliable).",
    )
    explanations: list[RowExplanation] | None = Field(
        default=None, description="When asked with `explain`: one per row."
    )


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Path into the request body.")
    msg: str


class ErrorInfo(BaseModel):
    type: str = Field(description="Machine-readable error kind, e.g. validation_error.")
    message: str
    details: list[ErrorItem] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorInfo


def error_responses(
    texts: dict[int, str], model: type[BaseModel] = ErrorResponse
) -> dict[int | str, dict[str, Any]]:
    """An operation's documented error answers (OpenAPI ``responses``), by status code."""
    return {code: {"model": model, "description": text} for code, text in texts.items()}


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` put in place: an operation's extra OpenAPI (a body the
    route reads itself) cannot hold refs into ``$defs``, which ReDoc cannot resolve."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def task_label(manifest: Manifest) -> str:
    return "classifier" if manifest.task == Task.CLASSIFICATION else "regressor"
