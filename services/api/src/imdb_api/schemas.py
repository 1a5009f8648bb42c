"""Pydantic models of the responses, for the OpenAPI document (the hot path writes JSON itself).

Request bodies are documented by `validation.MovieValidator`'s JSON Schemas, which follow the
served artifact's feature schema.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    """The predicted rating of one movie."""

    # camelCase as in IMDb's files (averageRating) and the request fields.
    averageRating: float = Field(  # noqa: N815
        ge=1.0, le=10.0, description="predicted IMDb averageRating", examples=[6.56]
    )
    modelVersion: str = Field(description="version of the artifact that predicted it")  # noqa: N815


class BatchPrediction(BaseModel):
    """Predicted ratings of a batch, in the order of the request's movies."""

    averageRatings: list[float] = Field(  # noqa: N815
        description="one predicted averageRating (1-10) per movie, in request order"
    )
    modelVersion: str = Field(  # noqa: N815
        description="version of the artifact that predicted them"
    )


class ErrorItem(BaseModel):
    """One problem in the request, located in the body."""

    loc: list[str | int] = Field(description="path to the offending value, e.g. body.startYear")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of this API."""

    error: str = Field(
        description="machine-readable kind: invalid_json, unsupported_media_type, "
        "payload_too_large, validation_error, not_ready, not_found, method_not_allowed, "
        "internal_error"
    )
    detail: str = Field(description="what went wrong, for humans")
    errors: list[ErrorItem] | None = Field(
        default=None, description="each problem of a 422, located in the request body"
    )
    requestId: str | None = Field(  # noqa: N815
        default=None, description="the request's X-Request-ID"
    )


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness: whether the verified model serves predictions, and if not, why."""

    ready: bool
    status: Literal["not_configured", "loading", "ready", "failed"]
    modelVersion: str | None = None  # noqa: N815
    reasons: list[str] = Field(description="why the service is not ready (empty when ready)")


class ModelInfo(BaseModel):
    """The public part of the artifact's manifest."""

    # `model_name` is the manifest's key; pydantic would warn about its "model_" prefix.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    version: str
    format_version: int
    manifest_sha256: str
    features: dict[str, Any] = Field(
        description="feature schema: genres, title types, valid ranges, feature names"
    )
    model_name: str | None = None
    created_at: str | None = None
    model: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    prediction_distribution: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    release: dict[str, Any] | None = Field(
        default=None,
        description="the release this image was built as: commit, tree, model, image digests "
        "are in the registry's record (none when the service runs outside a release image)",
    )
