"""Request validation for movies, and the JSON Schemas that document it in OpenAPI.

Both are derived from the artifact's `FeatureSchema` (genre vocabulary, title types, valid
ranges), so the API accepts exactly what the served model was trained for and the OpenAPI
document says so. The checks are hand-written rather than a pydantic model because they sit on
the hot path: a few `type(...) is` tests per field cost well under a microsecond, and they
collect every problem of a request with its location instead of stopping at the first one.

The API is stricter than the file format that `imdb_model.features` also reads: JSON types
only (no "1994" strings, no 0/1 for isAdult, genres as an array), unknown fields refused.

Batches take a faster road first: msgspec decodes the body straight into typed structs built
from the same schema, so parsing and checking are one pass in C (`decode_columns`). It accepts
only what `check` accepts; anything it refuses, including what is valid but unusual (1994.0 as
a year), goes the ordinary way, which answers exactly as before.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any, Final, Literal, Optional

import msgspec
import numpy as np

from imdb_model import INPUT_FIELDS, FeatureSchema

NULL_MARKER: Final[str] = "\\N"
FIELDS: Final[tuple[str, ...]] = INPUT_FIELDS
_FIELD_SET: Final[frozenset[str]] = frozenset(FIELDS)
_GETTERS: Final[dict[str, attrgetter[Any]]] = {name: attrgetter(name) for name in FIELDS}
# Stop collecting after this many problems: a 1000-row batch of garbage needs no 7000-line answer.
MAX_ERRORS: Final[int] = 20

Loc = tuple[str | int, ...]
ErrorItem = dict[str, Any]


class InvalidRequestError(Exception):
    """The request body was parsed but does not describe valid movies (HTTP 422)."""

    def __init__(self, errors: list[ErrorItem]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


def _error(loc: Loc, msg: str, kind: str) -> ErrorItem:
    return {"loc": list(loc), "msg": msg, "type": kind}


# An unknown field is named in the answer's `loc` and `detail`: a client's 2 MiB key must not
# come back twice, so names are quoted up to this many characters.
MAX_NAME_SHOWN: Final[int] = 64


def shown_name(key: str) -> str:
    """`key` as an answer quotes it: whole when short, else its start and its length."""
    if len(key) <= MAX_NAME_SHOWN:
        return key
    return f"{key[:MAX_NAME_SHOWN]}... ({len(key)} characters)"


# Type expressions for msgspec, built at run time from the served schema.


def _nullable(kind: Any) -> Any:
    return Optional[kind]  # noqa: UP045 - a run-time type expression, not an annotation


def _text(min_length: int, max_length: int) -> Any:
    return Annotated[str, msgspec.Meta(min_length=min_length, max_length=max_length)]


def _integer(bounds: tuple[int, int]) -> Any:
    return Annotated[int, msgspec.Meta(ge=bounds[0], le=bounds[1])]


def _one_of(names: tuple[str, ...]) -> Any:
    return Literal[names]  # msgspec checks membership while it decodes


def _list_of(item: Any, max_length: int) -> Any:
    return Annotated[list.__class_getitem__(item), msgspec.Meta(max_length=max_length)]


class MovieValidator:
    """Checks movie objects against the served model's schema."""

    def __init__(self, schema: FeatureSchema, max_string_length: int) -> None:
        self.schema = schema
        self.max_string_length = max_string_length
        self.genres = frozenset(schema.genres)
        self.title_types = frozenset(schema.title_types)
        self.max_genres = len(schema.genres)
        self.ranges = {
            "startYear": schema.start_year_range,
            "runtimeMinutes": schema.runtime_minutes_range,
        }
        self._movie_struct = self._define_movie_struct()
        self._batch_decoders: dict[int, msgspec.json.Decoder[Any]] = {}

    # ------------------------------------------------------------------ the fast batch road

    def _define_movie_struct(self) -> Any:
        """A msgspec struct that accepts exactly the movies `check` accepts, in their usual
        JSON form (a year written 1994.0 is valid but left to `check`)."""
        limit = self.max_string_length
        fields: list[tuple[str, Any, Any]] = [
            ("originalTitle", _nullable(_text(0, limit)), None),
            ("titleType", _nullable(_one_of(self.schema.title_types)), None),
            ("isAdult", _nullable(bool), None),
            ("startYear", _nullable(_integer(self.ranges["startYear"])), None),
            ("runtimeMinutes", _nullable(_integer(self.ranges["runtimeMinutes"])), None),
            ("genres", _nullable(_list_of(_one_of(self.schema.genres), self.max_genres)), None),
        ]
        title = ("primaryTitle", _text(1, limit))
        # gc=False: a movie holds only strings, numbers and a list of strings, so it can never be
        # part of a reference cycle, and a 1,000-movie batch then adds no work for the collector.
        return msgspec.defstruct("Movie", [title, *fields], forbid_unknown_fields=True, gc=False)

    def decode_columns(self, body: bytes, max_batch: int) -> dict[str, Any] | None:
        """A batch body's movies as `validate_columns` gives them, decoded and checked in one
        pass; None when the body is anything but a plain valid batch (the caller then parses
        and validates it the ordinary way, which explains what is wrong)."""
        decoder = self._batch_decoders.get(max_batch)
        if decoder is None:
            movies = ("movies", _list_of(self._movie_struct, max_batch))
            batch = msgspec.defstruct("MovieBatch", [movies], forbid_unknown_fields=True)
            decoder = self._batch_decoders[max_batch] = msgspec.json.Decoder(batch)
        try:
            movies = decoder.decode(body).movies
        except msgspec.DecodeError:  # ValidationError included
            return None
        columns: dict[str, Any] = {name: list(map(_GETTERS[name], movies)) for name in FIELDS}
        for name in ("startYear", "runtimeMinutes", "isAdult"):
            columns[name] = np.array(columns[name], dtype=np.float64)  # None: NaN
        return columns

    def check(self, movie: Any, loc: Loc, errors: list[ErrorItem]) -> None:
        """Append the problems of one movie (located under `loc`) to `errors`."""
        if type(movie) is not dict:
            errors.append(_error(loc, "must be a JSON object describing one movie", "type_error"))
            return
        if not movie.keys() <= _FIELD_SET:
            for key in movie:
                if key not in _FIELD_SET:
                    errors.append(
                        _error(
                            (*loc, shown_name(key)),
                            f"unknown field; allowed fields: {', '.join(FIELDS)}",
                            "extra_forbidden",
                        )
                    )
        title = movie.get("primaryTitle")
        if type(title) is not str or not 0 < len(title) <= self.max_string_length:
            self._title(title, "primaryTitle" in movie, (*loc, "primaryTitle"), errors)
        original = movie.get("originalTitle")
        if original is not None and (
            type(original) is not str or len(original) > self.max_string_length
        ):
            errors.append(self._string_error(original, (*loc, "originalTitle")))
        for name, (low, high) in self.ranges.items():
            value = movie.get(name)
            if value is not None and (type(value) is not int or not low <= value <= high):
                self._integer(value, name, (*loc, name), errors)
        adult = movie.get("isAdult")
        if adult is not None and type(adult) is not bool:
            errors.append(_error((*loc, "isAdult"), "must be true, false or null", "type_error"))
        genres = movie.get("genres")
        if genres is not None and not self._known_genres(genres):
            self._genres(genres, (*loc, "genres"), errors)
        title_type = movie.get("titleType")
        if title_type is not None and (
            type(title_type) is not str or title_type not in self.title_types
        ):
            errors.append(
                _error(
                    (*loc, "titleType"),
                    f"must be one of the model's title types {list(self.schema.title_types)}"
                    " or null",
                    "enum",
                )
            )

    def _known_genres(self, genres: Any) -> bool:
        if type(genres) is not list or len(genres) > self.max_genres:
            return False
        try:
            return self.genres.issuperset(genres)
        except TypeError:  # an unhashable item (array, object) is not a genre name
            return False

    def _title(self, title: Any, present: bool, loc: Loc, errors: list[ErrorItem]) -> None:
        if not present:
            errors.append(_error(loc, "field required", "missing"))
        elif title in ("", NULL_MARKER):
            errors.append(_error(loc, "must be a non-empty title (not \\N)", "value_error"))
        else:
            errors.append(self._string_error(title, loc))

    def _string_error(self, value: Any, loc: Loc) -> ErrorItem:
        if type(value) is not str:
            return _error(loc, "must be a string", "type_error")
        return _error(
            loc, f"must be at most {self.max_string_length} characters long", "string_too_long"
        )

    def _integer(self, value: Any, name: str, loc: Loc, errors: list[ErrorItem]) -> None:
        # JSON Schema counts 1994.0 as an integer; booleans are not numbers here.
        if type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is not int:
            errors.append(_error(loc, "must be an integer or null", "type_error"))
            return
        low, high = self.ranges[name]
        if not low <= value <= high:
            errors.append(
                _error(loc, f"{value} is outside the valid range [{low}, {high}]", "range")
            )

    def _genres(self, genres: Any, loc: Loc, errors: list[ErrorItem]) -> None:
        if type(genres) is not list:
            errors.append(_error(loc, "must be an array of genre names or null", "type_error"))
            return
        if len(genres) > self.max_genres:
            errors.append(_error(loc, f"must list at most {self.max_genres} genres", "too_long"))
            return
        for i, genre in enumerate(genres):
            if type(genre) is not str:
                errors.append(_error((*loc, i), "genre names must be strings", "type_error"))
            elif genre not in self.genres:
                errors.append(
                    _error(
                        (*loc, i),
                        f"unknown genre {genre[:64]!r}; allowed genres: "
                        + ", ".join(self.schema.genres),
                        "unknown_genre",
                    )
                )

    def validate_one(self, movie: Any) -> dict[str, Any]:
        """The movie itself when it is valid; raises InvalidRequestError otherwise."""
        errors: list[ErrorItem] = []
        self.check(movie, ("body",), errors)
        if errors:
            raise InvalidRequestError(errors)
        result: dict[str, Any] = movie
        return result

    def validate_batch(self, body: Any, max_batch: int) -> list[dict[str, Any]]:
        """The list of movies of a valid batch body; raises InvalidRequestError otherwise.

        The caller has already refused batches longer than `max_batch` (413).
        """
        movies = body.get("movies") if type(body) is dict else None
        if type(movies) is not list:
            raise InvalidRequestError(
                [_error(("body", "movies"), "required: an array of movie objects", "missing")]
            )
        errors: list[ErrorItem] = []
        if len(body) > 1:
            errors.extend(
                _error(
                    ("body", shown_name(key)),
                    "unknown field; allowed fields: movies",
                    "extra_forbidden",
                )
                for key in body
                if key != "movies"
            )
        for i, movie in enumerate(movies):
            self.check(movie, ("body", "movies", i), errors)
            if len(errors) >= MAX_ERRORS:
                errors = errors[:MAX_ERRORS]
                errors.append(
                    _error(("body", "movies"), "too many problems; stopped here", "truncated")
                )
                break
        if errors:
            raise InvalidRequestError(errors)
        return movies

    def validate_columns(self, body: Any, max_batch: int) -> dict[str, Any]:
        """A valid batch body's movies as one list per field (None where absent), for
        `transform_columns`; raises InvalidRequestError with every located problem otherwise.

        Plain valid batches never get here: `decode_columns` takes them. This is the road of
        the unusual ones (a year written 1994.0) and of the invalid ones.
        """
        movies = self.validate_batch(body, max_batch)
        return {name: list(map(dict.get, movies, repeat(name))) for name in FIELDS}

    # ------------------------------------------------------------------ OpenAPI documentation

    def movie_json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one movie, exactly as `check` enforces it."""
        text = {"type": "string", "maxLength": self.max_string_length}

        def nullable(schema: dict[str, Any]) -> dict[str, Any]:
            return {"anyOf": [schema, {"type": "null"}]}

        def integer(name: str, low: int, high: int, example: int) -> dict[str, Any]:
            return nullable({"type": "integer", "minimum": low, "maximum": high}) | {
                "title": name,
                "examples": [example],
            }

        year_low, year_high = self.schema.start_year_range
        run_low, run_high = self.schema.runtime_minutes_range
        return {
            "title": "Movie",
            "description": "One title, with fields named as in IMDb's title.basics; a field "
            "that can be \\N in the file may be null or absent.",
            "type": "object",
            "additionalProperties": False,
            "required": ["primaryTitle"],
            "properties": {
                "primaryTitle": text
                | {
                    "title": "primaryTitle",
                    "minLength": 1,
                    "not": {"const": NULL_MARKER},
                    "examples": ["The Long Night"],
                },
                "originalTitle": nullable(text) | {"title": "originalTitle"},
                "titleType": nullable({"type": "string", "enum": list(self.schema.title_types)})
                | {
                    "title": "titleType",
                    "description": f"default: {self.schema.title_types[0]}",
                },
                "isAdult": nullable({"type": "boolean"}) | {"title": "isAdult"},
                "startYear": integer("startYear", year_low, year_high, 1994),
                "runtimeMinutes": integer("runtimeMinutes", run_low, run_high, 142),
                "genres": nullable(
                    {
                        "type": "array",
                        "maxItems": self.max_genres,
                        "items": {"type": "string", "enum": list(self.schema.genres)},
                    }
                )
                | {"title": "genres", "examples": [["Crime", "Drama"]]},
            },
        }

    def batch_json_schema(self, max_batch: int) -> dict[str, Any]:
        """The JSON Schema of a batch body (with `#/components/schemas/Movie` for the items)."""
        return {
            "title": "MovieBatch",
            "type": "object",
            "additionalProperties": False,
            "required": ["movies"],
            "properties": {
                "movies": {
                    "type": "array",
                    "maxItems": max_batch,
                    "items": {"$ref": "#/components/schemas/Movie"},
                    "description": f"at most {max_batch} movies (more: 413)",
                }
            },
        }
