"""The feature schema: the vocabulary and valid ranges that trainer, artifact and API share.

The schema travels inside every artifact's manifest (`FeatureSchema.to_dict`), so the API validates
requests against the schema the model was trained with, not against whatever this code says today.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

# The title.basics fields the model reads: the API's request fields, the trainer's input columns.
INPUT_FIELDS: Final[tuple[str, ...]] = (
    "primaryTitle",
    "originalTitle",
    "titleType",
    "isAdult",
    "startYear",
    "runtimeMinutes",
    "genres",
)

# The 28 genres that IMDb uses in title.basics. Any other token is rejected, never silently
# ignored: the trainer counts such rows as malformed, and the API answers 4xx.
GENRES: Final[tuple[str, ...]] = (
    "Action",
    "Adult",
    "Adventure",
    "Animation",
    "Biography",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Family",
    "Fantasy",
    "Film-Noir",
    "Game-Show",
    "History",
    "Horror",
    "Music",
    "Musical",
    "Mystery",
    "News",
    "Reality-TV",
    "Romance",
    "Sci-Fi",
    "Short",
    "Sport",
    "Talk-Show",
    "Thriller",
    "War",
    "Western",
)

# Every titleType that occurs in the public title.basics file.
KNOWN_TITLE_TYPES: Final[tuple[str, ...]] = (
    "movie",
    "short",
    "tvEpisode",
    "tvMiniSeries",
    "tvMovie",
    "tvPilot",
    "tvSeries",
    "tvShort",
    "tvSpecial",
    "video",
    "videoGame",
)

# Inclusive bounds of the raw inputs that the model accepts. The earliest film in IMDb is from
# 1874; announced titles reach a few years ahead. Runtimes beyond 1000 minutes exist (experimental
# art films) but are so rare that a model cannot learn from them: they count as out of range.
START_YEAR_RANGE: Final[tuple[int, int]] = (1870, 2050)
RUNTIME_MINUTES_RANGE: Final[tuple[int, int]] = (1, 1000)
RATING_RANGE: Final[tuple[float, float]] = (1.0, 10.0)

# Bumped whenever the meaning of any feature changes; an artifact with another transform version
# cannot be served by this code and is refused at load time.
TRANSFORM_VERSION: Final[int] = 1

# Title-derived feature names, in the order `features.title_features` returns them.
TITLE_FEATURES: Final[tuple[str, ...]] = (
    "title_length",
    "title_words",
    "title_has_digit",
    "title_sequel",
    "title_has_colon",
    "title_has_quote",
    "original_title_differs",
)


class SchemaError(ValueError):
    """A serialized schema that this code cannot use (other transform version, bad vocabulary)."""


@dataclass(frozen=True)
class FeatureSchema:
    """What the transformation produces and which raw values it accepts.

    `title_types` lists the titleType values the model was trained on; with more than one, each
    gets a one-hot feature. The first entry is the default when a request gives no titleType.
    """

    title_types: tuple[str, ...] = ("movie",)
    genres: tuple[str, ...] = GENRES
    start_year_range: tuple[int, int] = START_YEAR_RANGE
    runtime_minutes_range: tuple[int, int] = RUNTIME_MINUTES_RANGE
    rating_range: tuple[float, float] = RATING_RANGE
    transform_version: int = TRANSFORM_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not self.title_types:
            problems.append("title_types is empty")
        unknown = [t for t in self.title_types if t not in KNOWN_TITLE_TYPES]
        if unknown:
            problems.append(f"unknown title types {unknown}")
        if len(set(self.title_types)) != len(self.title_types):
            problems.append("title_types has duplicates")
        if not self.genres or len(set(self.genres)) != len(self.genres):
            problems.append("genres must be a non-empty list without duplicates")
        if any("," in g or not g for g in self.genres):
            problems.append("a genre is empty or contains a comma")
        for name, (low, high) in (
            ("start_year_range", self.start_year_range),
            ("runtime_minutes_range", self.runtime_minutes_range),
            ("rating_range", self.rating_range),
        ):
            if low > high:
                problems.append(f"{name} is empty: {low} > {high}")
        if self.transform_version != TRANSFORM_VERSION:
            problems.append(
                f"transform version {self.transform_version} is not the supported "
                f"{TRANSFORM_VERSION}"
            )
        if problems:
            raise SchemaError("invalid feature schema: " + "; ".join(problems))

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Column names of the feature matrix, in order."""
        names = [
            "start_year",
            "start_year_missing",
            "runtime_minutes",
            "runtime_missing",
            "is_adult",
            "genre_count",
            "genres_missing",
        ]
        names += [f"genre_{g}" for g in self.genres]
        names += TITLE_FEATURES
        if len(self.title_types) > 1:
            names += [f"type_{t}" for t in self.title_types]
        return tuple(names)

    @cached_property
    def genre_offset(self) -> int:
        """Column of the first genre indicator."""
        return self.feature_names.index(f"genre_{self.genres[0]}")

    @cached_property
    def title_offset(self) -> int:
        """Column of the first title-derived feature."""
        return self.feature_names.index(TITLE_FEATURES[0])

    @cached_property
    def genre_index(self) -> dict[str, int]:
        """Genre name -> feature column."""
        return {g: self.genre_offset + i for i, g in enumerate(self.genres)}

    @cached_property
    def type_index(self) -> dict[str, int | None]:
        """titleType -> one-hot column (None when the model has a single type and no one-hot)."""
        if len(self.title_types) == 1:
            return {self.title_types[0]: None}
        start = self.feature_names.index(f"type_{self.title_types[0]}")
        return {t: start + i for i, t in enumerate(self.title_types)}

    @property
    def n_features(self) -> int:
        """Width of the feature matrix."""
        return len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the manifest (the API validates requests against it)."""
        return {
            "transform_version": self.transform_version,
            "feature_names": list(self.feature_names),
            "title_types": list(self.title_types),
            "genres": list(self.genres),
            "valid_ranges": {
                "startYear": list(self.start_year_range),
                "runtimeMinutes": list(self.runtime_minutes_range),
                "averageRating": list(self.rating_range),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        """Inverse of `to_dict`; raises SchemaError when it does not describe this transform."""
        try:
            ranges = data["valid_ranges"]
            schema = cls(
                title_types=tuple(str(t) for t in data["title_types"]),
                genres=tuple(str(g) for g in data["genres"]),
                start_year_range=(int(ranges["startYear"][0]), int(ranges["startYear"][1])),
                runtime_minutes_range=(
                    int(ranges["runtimeMinutes"][0]),
                    int(ranges["runtimeMinutes"][1]),
                ),
                rating_range=(
                    float(ranges["averageRating"][0]),
                    float(ranges["averageRating"][1]),
                ),
                transform_version=int(data["transform_version"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"malformed feature schema: {exc!r}") from exc
        names = data.get("feature_names")
        if names is not None and list(names) != list(schema.feature_names):
            raise SchemaError("feature_names do not match what this transform produces")
        return schema
