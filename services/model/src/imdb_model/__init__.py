"""The model contract shared by trainer and API: features, artifact checks, fast predictor."""

from imdb_model.artifact import (
    MANIFEST_NAME,
    Artifact,
    ArtifactVerificationError,
    load_predictor,
    verify_artifact,
)
from imdb_model.features import (
    FeatureError,
    transform_columns,
    transform_record,
    transform_records,
)
from imdb_model.predictor import Predictor
from imdb_model.schema import GENRES, INPUT_FIELDS, FeatureSchema, SchemaError

__all__ = [
    "GENRES",
    "INPUT_FIELDS",
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactVerificationError",
    "FeatureError",
    "FeatureSchema",
    "Predictor",
    "SchemaError",
    "load_predictor",
    "transform_columns",
    "transform_record",
    "transform_records",
    "verify_artifact",
]
