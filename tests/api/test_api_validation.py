"""Bad input gets a clear 4xx JSON answer, never a 5xx: one explicit case per kind of problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from imdb_api.validation import (
    FIELDS,
    MAX_ERRORS,
    MAX_NAME_SHOWN,
    InvalidRequestError,
    MovieValidator,
    shown_name,
)
from imdb_model import GENRES, FeatureSchema

from .conftest import MOVIE, make_api

JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def small_client(artifact: Path) -> Iterator[TestClient]:
    """Tight limits so that the limit cases stay small."""
    api = make_api(artifact, max_batch=5, max_body_bytes=4096, max_string_length=40)
    with TestClient(api) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: bytes, **headers: str) -> Any:
    return client.post(path, content=body, headers=JSON_HEADERS | headers)


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        ({"primaryTitle": 7}, ["body", "primaryTitle"], "type_error"),
        ({"primaryTitle": ""}, ["body", "primaryTitle"], "value_error"),
        ({"primaryTitle": "\\N"}, ["body", "primaryTitle"], "value_error"),
        ({"primaryTitle": "x" * 41}, ["body", "primaryTitle"], "string_too_long"),
        ({"originalTitle": "y" * 41}, ["body", "originalTitle"], "string_too_long"),
        ({"originalTitle": ["a"]}, ["body", "originalTitle"], "type_error"),
        ({"startYear": "1994"}, ["body", "startYear"], "type_error"),
        ({"startYear": 1994.5}, ["body", "startYear"], "type_error"),
        ({"startYear": True}, ["body", "startYear"], "type_error"),
        ({"startYear": 1000}, ["body", "startYear"], "range"),
        ({"startYear": 3000}, ["body", "startYear"], "range"),
        ({"startYear": 10**30}, ["body", "startYear"], "range"),
        ({"runtimeMinutes": 0}, ["body", "runtimeMinutes"], "range"),
        ({"runtimeMinutes": 100_000}, ["body", "runtimeMinutes"], "range"),
        ({"runtimeMinutes": {}}, ["body", "runtimeMinutes"], "type_error"),
        ({"isAdult": 0}, ["body", "isAdult"], "type_error"),
        ({"isAdult": "false"}, ["body", "isAdult"], "type_error"),
        ({"genres": "Drama,Crime"}, ["body", "genres"], "type_error"),
        ({"genres": ["Drama", "Noir"]}, ["body", "genres", 1], "unknown_genre"),
        ({"genres": [1]}, ["body", "genres", 0], "type_error"),
        ({"genres": [["Drama"]]}, ["body", "genres", 0], "type_error"),
        ({"genres": ["Drama"] * 29}, ["body", "genres"], "too_long"),
        ({"titleType": "tvEpisode"}, ["body", "titleType"], "enum"),
        ({"titleType": ["movie"]}, ["body", "titleType"], "enum"),
        ({"tconst": "tt0000001"}, ["body", "tconst"], "extra_forbidden"),
    ],
)
def test_invalid_fields_are_422_with_their_location(
    small_client: TestClient, change: dict[str, Any], loc: list[Any], kind: str
) -> None:
    response = small_client.post("/predict", json=MOVIE | change)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert [{"loc": loc, "type": kind}] == [
        {"loc": e["loc"], "type": e["type"]} for e in body["errors"]
    ]


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_an_unknown_field_name_is_quoted_only_up_to_a_short_length(
    artifact: Path, path: str
) -> None:
    """A 2 MiB key is named by its start and its length, not echoed back (twice)."""
    api = make_api(artifact, max_body_bytes=8 * 1024 * 1024)
    key = "k" * (2 * 1024 * 1024)
    body = MOVIE | {key: 1} if path == "/predict" else {"movies": [MOVIE], key: 1}
    with TestClient(api) as client:
        response = client.post(path, content=orjson.dumps(body), headers=JSON_HEADERS)
    assert response.status_code == 422
    assert len(response.content) < 2000
    (error,) = response.json()["errors"]
    shown = f"{'k' * MAX_NAME_SHOWN}... ({len(key)} characters)"
    assert error["loc"][-1] == shown
    assert error["type"] == "extra_forbidden"
    # A short unknown name is still quoted whole.
    assert shown_name("tconst") == "tconst"


def test_missing_title_and_non_objects(small_client: TestClient) -> None:
    missing = small_client.post("/predict", json={"startYear": 1994})
    assert missing.status_code == 422
    assert missing.json()["errors"][0] == {
        "loc": ["body", "primaryTitle"],
        "msg": "field required",
        "type": "missing",
    }
    for body in ([MOVIE], "movie", 5, None):
        response = post(small_client, "/predict", orjson.dumps(body))
        assert response.status_code == 422, body


def test_unknown_genre_lists_the_allowed_ones(small_client: TestClient) -> None:
    message = small_client.post("/predict", json=MOVIE | {"genres": ["Noir"]}).json()
    text = message["errors"][0]["msg"]
    assert "unknown genre 'Noir'" in text
    assert all(genre in text for genre in GENRES)


def test_every_problem_of_a_request_is_reported(small_client: TestClient) -> None:
    bad = {"primaryTitle": 1, "startYear": "x", "isAdult": 2, "extra": 1}
    errors = small_client.post("/predict", json=bad).json()["errors"]
    assert {tuple(e["loc"]) for e in errors} == {
        ("body", "primaryTitle"),
        ("body", "startYear"),
        ("body", "isAdult"),
        ("body", "extra"),
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"primaryTitle": "A", "startYear": NaN}',
        b'{"primaryTitle": "A", "startYear": Infinity}',
        b'{"primaryTitle": "A", "startYear": -Infinity}',
        b'{"primaryTitle": "A", "startYear": 1e999}',
        b'{"primaryTitle": "A",',
        b"",
        b"\xff\xfe",
        b'{"primaryTitle": "\\ud800"}',
    ],
)
def test_invalid_json_and_non_finite_numbers_are_400(small_client: TestClient, body: bytes) -> None:
    for path in ("/predict", "/predict/batch"):
        response = post(small_client, path, body)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_json"


def test_nan_gets_a_hint(small_client: TestClient) -> None:
    detail = post(small_client, "/predict", b'{"startYear": NaN}').json()["detail"]
    assert "NaN and Infinity are not valid JSON" in detail


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type_is_415(small_client: TestClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    for path in ("/predict", "/predict/batch"):
        response = small_client.post(path, content=b'{"primaryTitle": "A"}', headers=headers)
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.x+json"],
)
def test_json_content_types_are_accepted(small_client: TestClient, content_type: str) -> None:
    response = small_client.post(
        "/predict", content=b'{"primaryTitle": "A"}', headers={"content-type": content_type}
    )
    assert response.status_code == 200


def test_oversized_body_is_413_from_the_header(small_client: TestClient) -> None:
    huge = b'{"primaryTitle": "' + b"x" * 10_000 + b'"}'
    response = post(small_client, "/predict", huge)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_oversized_streamed_body_is_413(small_client: TestClient) -> None:
    """Without Content-Length (chunked), the size is counted while reading."""

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1000

    response = small_client.post("/predict/batch", content=chunks(), headers=JSON_HEADERS)
    assert response.status_code == 413


def test_batch_problems_are_located_by_row(small_client: TestClient) -> None:
    movies = [MOVIE, MOVIE | {"startYear": 1}, MOVIE | {"genres": ["Nope"]}]
    errors = small_client.post("/predict/batch", json={"movies": movies}).json()["errors"]
    assert [e["loc"] for e in errors] == [
        ["body", "movies", 1, "startYear"],
        ["body", "movies", 2, "genres", 0],
    ]


@pytest.mark.parametrize(
    "body",
    [
        [MOVIE],
        {"movie": [MOVIE]},
        {"movies": MOVIE},
        {"movies": [MOVIE], "extra": 1},
        {"movies": [1]},
    ],
)
def test_malformed_batches_are_422(small_client: TestClient, body: Any) -> None:
    response = small_client.post("/predict/batch", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


def test_batch_errors_are_capped() -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    with pytest.raises(InvalidRequestError) as caught:
        validator.validate_batch({"movies": [{"primaryTitle": 1}] * 100}, 1000)
    assert len(caught.value.errors) == MAX_ERRORS + 1
    assert caught.value.errors[-1]["type"] == "truncated"


def test_the_transforms_own_checks_are_a_4xx_too(artifact: Path) -> None:
    """Should the validator ever let something through, FeatureError still becomes a 422."""
    api = make_api(artifact)
    api._validator_now()
    api._validator.validate_one = lambda movie: movie  # type: ignore[method-assign]
    api._validator.validate_columns = lambda body, max_batch: {  # type: ignore[method-assign]
        name: [movie.get(name) for movie in body["movies"]] for name in FIELDS
    }
    with TestClient(api) as unchecked:
        single = unchecked.post("/predict", json=MOVIE | {"startYear": "year"})
        batch = unchecked.post("/predict/batch", json={"movies": [MOVIE, {"primaryTitle": 5}]})
    assert single.status_code == 422
    assert single.json()["errors"][0]["loc"] == ["body", "startYear"]
    assert batch.status_code == 422
    assert batch.json()["errors"][0]["loc"] == ["body", "movies", 1, "primaryTitle"]


BATCH_CHANGES: list[dict[str, Any]] = [
    {"primaryTitle": 7},
    {"primaryTitle": ""},
    {"primaryTitle": "x" * 41},
    {"originalTitle": "y" * 41},
    {"originalTitle": ["a"]},
    {"startYear": "1994"},
    {"startYear": 1994.5},
    {"startYear": True},
    {"startYear": 1000},
    {"startYear": 3000},
    {"startYear": 10**30},
    {"startYear": 10**400},
    {"startYear": float("nan")},
    {"startYear": float("inf")},
    {"runtimeMinutes": 0},
    {"runtimeMinutes": {}},
    {"isAdult": 0},
    {"isAdult": "false"},
    {"genres": "Drama,Crime"},
    {"genres": ["Drama", "Noir"]},
    {"genres": [1]},
    {"genres": [["Drama"]]},
    {"genres": ["Drama"] * 29},
    {"titleType": "tvEpisode"},
    {"titleType": ["movie"]},
    {"tconst": "tt0000001"},
]


@pytest.mark.parametrize("change", BATCH_CHANGES)
def test_column_wise_validation_reports_what_the_per_movie_checks_report(
    change: dict[str, Any],
) -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    body = {"movies": [MOVIE, MOVIE | change, {"primaryTitle": "B"}]}
    with pytest.raises(InvalidRequestError) as per_movie:
        validator.validate_batch(body, 1000)
    with pytest.raises(InvalidRequestError) as column_wise:
        validator.validate_columns(body, 1000)
    assert column_wise.value.errors == per_movie.value.errors
    assert str(column_wise.value) == str(per_movie.value)


@pytest.mark.parametrize(
    "body",
    [[MOVIE], {"movies": MOVIE}, {"movies": [MOVIE], "extra": 1}, {"movies": [1, MOVIE]}],
)
def test_column_wise_validation_of_malformed_bodies(body: Any) -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    with pytest.raises(InvalidRequestError) as per_movie:
        validator.validate_batch(body, 1000)
    with pytest.raises(InvalidRequestError) as column_wise:
        validator.validate_columns(body, 1000)
    assert column_wise.value.errors == per_movie.value.errors


def test_column_wise_validation_of_valid_batches() -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    movies = [
        MOVIE,
        {"primaryTitle": "B", "startYear": 1994.0, "runtimeMinutes": None, "genres": None},
        {"primaryTitle": "C", "genres": [], "isAdult": True, "originalTitle": None},
        {"primaryTitle": "\\N"},  # the transform, not the validator, refuses it (as before)
    ]
    columns = validator.validate_columns({"movies": movies}, 1000)
    assert list(columns) == list(FIELDS)
    assert columns["primaryTitle"] == ["The Long Night: Part II", "B", "C", "\\N"]
    assert columns["startYear"] == [1994, 1994.0, None, None]
    assert columns["runtimeMinutes"] == [142, None, None, None]
    assert columns["isAdult"] == [False, None, True, None]
    assert columns["genres"] == [["Crime", "Drama"], None, [], None]
    assert validator.validate_columns({"movies": []}, 1000) == {name: [] for name in FIELDS}


def test_batches_of_only_missing_optional_fields(small_client: TestClient) -> None:
    movies = [{"primaryTitle": "A"}, {"primaryTitle": "B", "genres": None, "startYear": None}]
    response = small_client.post("/predict/batch", json={"movies": movies})
    assert response.status_code == 200
    singles = [small_client.post("/predict", json=m).json()["averageRating"] for m in movies]
    assert response.json()["averageRatings"] == singles


def same_columns(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Equal columns, numeric ones compared as float arrays with NaN equal to NaN."""
    if list(left) != list(right):
        return False
    for name in FIELDS:
        if name in ("startYear", "runtimeMinutes", "isAdult"):
            a = np.asarray(left[name], dtype=np.float64)
            b = np.asarray(right[name], dtype=np.float64)
            if not np.array_equal(a, b, equal_nan=True):
                return False
        elif left[name] != right[name]:
            return False
    return True


def encoded(body: Any) -> bytes:
    # The standard library writes NaN, Infinity and huge integers, as a careless client might.
    return json.dumps(body, allow_nan=True).encode()


@pytest.mark.parametrize("change", [{}, *BATCH_CHANGES])
def test_decoded_batches_are_accepted_only_when_the_checks_accept_them(
    change: dict[str, Any],
) -> None:
    """The fast road (msgspec) never accepts what the checks refuse, and gives the same columns
    when it accepts."""
    validator = MovieValidator(FeatureSchema(), 40)
    body = {"movies": [MOVIE, MOVIE | change, {"primaryTitle": "B"}]}
    decoded = validator.decode_columns(encoded(body), 1000)
    try:
        expected = validator.validate_columns(body, 1000)
    except InvalidRequestError:
        assert decoded is None
    else:
        assert decoded is not None
        assert same_columns(decoded, expected)


@pytest.mark.parametrize(
    "body",
    [
        {"movies": []},
        {"movies": [{"primaryTitle": "A"}, {"primaryTitle": "\\N", "genres": None}]},
        {"movies": [{"primaryTitle": "C", "genres": [], "isAdult": True, "originalTitle": None}]},
        {"movies": [MOVIE | {"isAdult": False, "titleType": "movie", "runtimeMinutes": 90}]},
    ],
)
def test_plain_valid_batches_take_the_fast_road(body: dict[str, Any]) -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    decoded = validator.decode_columns(encoded(body), 1000)
    assert decoded is not None
    assert same_columns(decoded, validator.validate_columns(body, 1000))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"movies": [{"primaryTitle": "A", "startYear": 1994.0}]}',  # valid, but unusual
        b'[{"primaryTitle": "A"}]',
        b'{"movies": [{"primaryTitle": "A"}, {"primaryTitle": "B"}]',  # truncated
        b'{"movies": [{"primaryTitle": "\\ud800"}]}',  # a lone surrogate
        b'{"movies": [{"primaryTitle": "A"}, {"primaryTitle": "B"}, {"primaryTitle": "C"}]}',
    ],
)
def test_anything_unusual_leaves_the_fast_road(raw: bytes) -> None:
    """None sends the body the ordinary way (a 3-movie batch is over this limit of 2)."""
    assert MovieValidator(FeatureSchema(), 40).decode_columns(raw, 2) is None


def test_duplicate_fields_mean_the_same_on_both_roads() -> None:
    validator = MovieValidator(FeatureSchema(), 40)
    raw = b'{"movies": [{"primaryTitle": "first", "primaryTitle": "last"}]}'
    decoded = validator.decode_columns(raw, 1000)
    assert decoded is not None
    assert decoded["primaryTitle"] == ["last"]
    assert validator.validate_columns(orjson.loads(raw), 1000)["primaryTitle"] == ["last"]
    raw = b'{"movies": [{"primaryTitle": "A"}], "movies": []}'
    decoded = validator.decode_columns(raw, 1000)
    assert decoded is not None
    assert same_columns(decoded, validator.validate_columns(orjson.loads(raw), 1000))
