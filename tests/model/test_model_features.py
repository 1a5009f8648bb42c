"""The shared feature transformation: parsing rules, and batch/record/single-row identity."""

from __future__ import annotations

import math
import random
import re
import sys
from typing import Any

import numpy as np
import pytest

from imdb_model.features import (
    FeatureError,
    parse_genres,
    parse_integer,
    parse_is_adult,
    parse_title,
    title_features,
    transform_columns,
    transform_record,
    transform_records,
)
from imdb_model.schema import GENRES, TITLE_FEATURES, FeatureSchema

SCHEMA = FeatureSchema()
NAMES = SCHEMA.feature_names

# Hand-written raw rows covering every quirk of the title.basics fields.
RECORDS: list[dict[str, Any]] = [
    {
        "primaryTitle": "The Long Night",
        "originalTitle": "The Long Night",
        "isAdult": 0,
        "startYear": 1994,
        "runtimeMinutes": 142,
        "genres": "Crime,Drama",
    },
    {
        "primaryTitle": '"Weird" Al: Part 2',
        "originalTitle": "\\N",
        "isAdult": "1",
        "startYear": "2015",
        "runtimeMinutes": "\\N",
        "genres": ["Horror", "Horror", "Thriller"],
    },
    {"primaryTitle": "Untitled", "startYear": None, "runtimeMinutes": None, "genres": None},
    {"primaryTitle": '12" Single', "originalTitle": "Douze", "genres": "", "isAdult": True},
    {
        "primaryTitle": "Rocky III",
        "startYear": 1982.0,
        "runtimeMinutes": float("nan"),
        "genres": [],
    },
    {
        "primaryTitle": "東京 Story 1953",
        "startYear": np.int64(1953),
        "runtimeMinutes": np.float32(136),
    },
    {"primaryTitle": "  Spaced   Out  ", "isAdult": None, "genres": "\\N", "titleType": "movie"},
]


def column(name: str) -> list[Any]:
    return [r.get(name) for r in RECORDS]


def test_schema_feature_layout() -> None:
    assert NAMES[:7] == (
        "start_year",
        "start_year_missing",
        "runtime_minutes",
        "runtime_missing",
        "is_adult",
        "genre_count",
        "genres_missing",
    )
    assert len(NAMES) == 7 + len(GENRES) + len(TITLE_FEATURES)
    assert "numVotes" not in " ".join(NAMES).lower().replace("_", "")


def test_record_values() -> None:
    row = dict(zip(NAMES, transform_record(RECORDS[0], SCHEMA)[0].tolist(), strict=True))
    assert row["start_year"] == 1994
    assert row["start_year_missing"] == 0
    assert row["runtime_minutes"] == 142
    assert row["genre_Crime"] == row["genre_Drama"] == 1
    assert row["genre_count"] == 2
    assert row["title_length"] == len("The Long Night")
    assert row["title_words"] == 3
    assert row["original_title_differs"] == 0

    quirky = dict(zip(NAMES, transform_record(RECORDS[1], SCHEMA)[0].tolist(), strict=True))
    assert quirky["is_adult"] == 1
    assert quirky["runtime_missing"] == 1
    assert quirky["runtime_minutes"] == 0
    assert quirky["genre_count"] == 2  # duplicates count once
    assert quirky["title_has_quote"] == quirky["title_has_colon"] == quirky["title_sequel"] == 1
    assert quirky["original_title_differs"] == 0  # \N original means "same as primary"

    empty = dict(zip(NAMES, transform_record(RECORDS[2], SCHEMA)[0].tolist(), strict=True))
    assert empty["start_year_missing"] == empty["runtime_missing"] == empty["genres_missing"] == 1


def test_columns_records_and_single_rows_are_identical() -> None:
    fields = ("primaryTitle", "originalTitle", "isAdult", "startYear", "runtimeMinutes", "genres")
    columns = {name: column(name) for name in fields}
    batch = transform_columns(columns, SCHEMA)
    records = transform_records(RECORDS, SCHEMA)
    singles = np.vstack([transform_record(r, SCHEMA) for r in RECORDS])
    assert batch.dtype == records.dtype == singles.dtype == np.float32
    np.testing.assert_array_equal(batch, records)
    np.testing.assert_array_equal(batch, singles)


def test_numeric_arrays_match_python_values() -> None:
    columns = {
        "primaryTitle": column("primaryTitle"),
        "startYear": np.array([1994, 2015, np.nan, np.nan, 1982, 1953, np.nan]),
        "runtimeMinutes": np.array([142, np.nan, np.nan, np.nan, np.nan, 136, np.nan]),
        "isAdult": np.array([0, 1, 0, 1, 0, 0, np.nan]),
        "genres": column("genres"),
        "originalTitle": column("originalTitle"),
    }
    fields = ("primaryTitle", "originalTitle", "isAdult", "startYear", "runtimeMinutes", "genres")
    expected = transform_columns({name: column(name) for name in fields}, SCHEMA)
    np.testing.assert_array_equal(transform_columns(columns, SCHEMA), expected)


def test_missing_columns_mean_missing_values() -> None:
    matrix = transform_columns({"primaryTitle": ["A", "B"]}, SCHEMA)
    assert matrix[:, NAMES.index("start_year_missing")].tolist() == [1, 1]
    assert matrix[:, NAMES.index("genres_missing")].tolist() == [1, 1]
    assert matrix[:, NAMES.index("is_adult")].tolist() == [0, 0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("\\N", None),
        (float("nan"), None),
        (np.float32("nan"), None),
        (1999, 1999),
        (np.int32(1999), 1999),
        (1999.0, 1999),
        ("1999", 1999),
    ],
)
def test_parse_integer_accepts(value: Any, expected: int | None) -> None:
    assert parse_integer(value, "startYear", (1870, 2050)) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "boolean"),
        (1999.5, "whole number"),
        (math.inf, "whole number"),
        ("19x9", "not a number"),
        ("", "not a number"),
        ("-5", "not a number"),
        ("١٩٩٩", "not a number"),  # Arabic-Indic digits: not ASCII
        ([1999], "must be an integer"),
        (1066, "outside the valid range"),
        ("3000", "outside the valid range"),
    ],
)
def test_parse_integer_rejects(value: Any, message: str) -> None:
    with pytest.raises(FeatureError, match=message) as caught:
        parse_integer(value, "startYear", (1870, 2050))
    assert caught.value.field == "startYear"
    assert caught.value.row is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0.0),
        ("\\N", 0.0),
        ("0", 0.0),
        ("1", 1.0),
        (1, 1.0),
        (0.0, 0.0),
        (True, 1.0),
        (False, 0.0),
    ],
)
def test_parse_is_adult(value: Any, expected: float) -> None:
    assert parse_is_adult(value) == expected


@pytest.mark.parametrize("value", ["2019", 2, "yes", 0.5, [1]])
def test_parse_is_adult_rejects(value: Any) -> None:
    with pytest.raises(FeatureError, match="isAdult"):
        parse_is_adult(value)


def test_parse_genres() -> None:
    assert parse_genres(None, GENRES) == ()
    assert parse_genres("", GENRES) == ()
    assert parse_genres("\\N", GENRES) == ()
    assert parse_genres([], GENRES) == ()
    assert parse_genres("Drama,Comedy", GENRES) == parse_genres(("Comedy", "Drama"), GENRES)
    with pytest.raises(FeatureError, match="unknown genre 'Cyberpunk'"):
        parse_genres("Drama,Cyberpunk", GENRES)
    with pytest.raises(FeatureError, match="unknown genre ''"):
        parse_genres("Drama,", GENRES)
    with pytest.raises(FeatureError, match="must be strings"):
        parse_genres(["Drama", 3], GENRES)
    with pytest.raises(FeatureError, match="comma-separated"):
        parse_genres(42, GENRES)


def test_titles() -> None:
    assert parse_title("X") == "X"
    for bad in (None, "\\N", "", 42):
        with pytest.raises(FeatureError, match="primaryTitle"):
            parse_title(bad)
    sequel = TITLE_FEATURES.index("title_sequel")
    digit = TITLE_FEATURES.index("title_has_digit")
    for title in ("Rocky II", "Saw 3", "Kill Bill: Vol. 2", "Dune: Part Two", "Alien 3: Rebirth"):
        assert title_features(title, None)[sequel] == 1.0, title
    for title in ("I, Robot", "Se7en", "2001: A Space Odyssey", "The Matrix", "Partners"):
        assert title_features(title, None)[sequel] == 0.0, title
    assert title_features("1984", None)[digit] == 1.0
    assert title_features("Heat", "Hitze")[-1] == 1.0
    with pytest.raises(FeatureError, match="originalTitle"):
        title_features("Heat", 5)


def test_batch_errors_name_the_row() -> None:
    with pytest.raises(FeatureError, match="row 1: startYear") as caught:
        transform_columns({"primaryTitle": ["A", "B"], "startYear": [1999, "19x9"]}, SCHEMA)
    assert caught.value.row == 1
    with pytest.raises(FeatureError, match="row 2: startYear"):
        transform_columns(
            {"primaryTitle": ["A", "B", "C"], "startYear": np.array([1990, 1991, 1992.5])}, SCHEMA
        )
    with pytest.raises(FeatureError, match="row 0: startYear: 1 is outside"):
        transform_columns({"primaryTitle": ["A"], "startYear": np.array([1])}, SCHEMA)
    with pytest.raises(FeatureError, match="row 1: isAdult"):
        transform_columns({"primaryTitle": ["A", "B"], "isAdult": np.array([0, 3])}, SCHEMA)
    with pytest.raises(FeatureError, match="row 1: isAdult"):
        transform_columns({"primaryTitle": ["A", "B"], "isAdult": ["0", "x"]}, SCHEMA)
    with pytest.raises(FeatureError, match="row 1: genres"):
        transform_columns({"primaryTitle": ["A", "B"], "genres": ["Drama", "Nope"]}, SCHEMA)
    with pytest.raises(FeatureError, match="row 1: primaryTitle"):
        transform_columns({"primaryTitle": ["A", None]}, SCHEMA)
    with pytest.raises(FeatureError, match="row 0: titleType"):
        transform_columns({"primaryTitle": ["A"], "titleType": ["tvEpisode"]}, SCHEMA)
    with pytest.raises(FeatureError, match="has 1 values, expected 2"):
        transform_columns({"primaryTitle": ["A", "B"], "genres": ["Drama"]}, SCHEMA)
    with pytest.raises(FeatureError, match="row 1: runtimeMinutes"):
        transform_records(
            [{"primaryTitle": "A"}, {"primaryTitle": "B", "runtimeMinutes": 0}], SCHEMA
        )


def test_title_types_one_hot() -> None:
    schema = FeatureSchema(title_types=("movie", "tvMovie"))
    assert schema.feature_names[-2:] == ("type_movie", "type_tvMovie")
    records = [
        {"primaryTitle": "A", "titleType": "tvMovie"},
        {"primaryTitle": "B"},  # defaults to the first type
        {"primaryTitle": "C", "titleType": "movie"},
    ]
    batch = transform_columns(
        {"primaryTitle": ["A", "B", "C"], "titleType": ["tvMovie", None, "movie"]}, schema
    )
    np.testing.assert_array_equal(batch, transform_records(records, schema))
    assert batch[:, -2:].tolist() == [[0, 1], [1, 0], [1, 0]]
    default = transform_columns({"primaryTitle": ["A"]}, schema)
    assert default[0, -2:].tolist() == [1, 0]
    with pytest.raises(FeatureError, match="row 0: titleType"):
        transform_columns({"primaryTitle": ["A"], "titleType": ["short"]}, schema)


def test_empty_batch() -> None:
    assert transform_columns({"primaryTitle": []}, SCHEMA).shape == (0, SCHEMA.n_features)
    assert transform_records([], SCHEMA).shape == (0, SCHEMA.n_features)


def test_a_batch_in_which_no_row_has_a_genre() -> None:
    # Regression: the empty hit list used to be float64 and broke the fancy indexing.
    columns = {"primaryTitle": ["A", "B"], "genres": [[], "\\N"]}
    matrix = transform_columns(columns, SCHEMA)
    genre_columns = [i for i, name in enumerate(NAMES) if name.startswith("genre_")]
    assert not matrix[:, genre_columns].any()
    np.testing.assert_array_equal(
        matrix,
        transform_records(
            [{"primaryTitle": "A", "genres": []}, {"primaryTitle": "B", "genres": "\\N"}], SCHEMA
        ),
    )


# ---------------------------------------------------------------- the vectorised and shortcut paths

_SEQUEL_REFERENCE = re.compile(
    r"(?:^|\s)(?:[2-9]|1[0-9]|II|III|IV|V|VI|VII|VIII|IX|X|XI|XII)(?=$|[\s:,.!?)])"
    r"|\b(?:Part|Chapter|Volume|Vol\.)\s+\S"
)
TRICKY_TITLES = [
    "Rocky II",
    "Rocky II: Return",
    "Rocky II:Return",
    "Rocky (II)",
    "Rocky II)",
    "Rocky XII.",
    "Rocky XIII",
    "II",
    " II ",
    "\tV\t",
    "Saw 3",
    "Saw 30",
    "Saw 1",
    "Saw 19!",
    "Saw 20",
    "Saw 3D",
    "3:10 to Yuma",
    "Se7en",
    "X-Men",
    "X",
    "Malcolm X",
    "I, Robot",
    "IV,V",
    "a\u00a0II",
    "a\u3000IX",
    "a\x1cIV",
    "a\u2028VI",
    "Part",
    "Part ",
    "Part 2",
    "Part\u00a0Two",
    "Part\nTwo",
    "Department 2",
    "_Part 2",
    "éPart 2",
    "(Part 2)",
    "Chapter One",
    "Chapter",
    "Vol. 2",
    "Vol 2",
    "Vol.2",
    "Volume 3",
    "Volume3",
    "Volumes 3",
    "Vol.",
    "Kill Bill: Vol. 2",
    "Dune: Part Two",
    "PartPart 2",
    "Part Part",
    "東京 Story 1953",
    '"Weird" Al: Part 2',
    "Partners",
    "The Matrix",
    "2001: A Space Odyssey",
    "   ",
    "\\",
    "\ud800 II",
]


def _reference_title_features(primary: str, original: Any) -> tuple[float, ...]:
    """The title features as first specified: the regexes, one title at a time."""
    if original is None or original == "\\N":
        original = primary
    return (
        float(len(primary)),
        float(len(primary.split())),
        1.0 if re.search(r"[0-9]", primary) else 0.0,
        1.0 if _SEQUEL_REFERENCE.search(primary) else 0.0,
        1.0 if ":" in primary else 0.0,
        1.0 if '"' in primary else 0.0,
        0.0 if original == primary else 1.0,
    )


def _random_titles(count: int, seed: int) -> list[str]:
    pieces = list('0123456789IVXPCartChapeolum.:,!?)(_x"é東 \t\n\u00a0\u3000\x1c\u2028')
    pieces += ["Part", "Chapter", "Volume", "Vol.", "Vol", "II", "XII", "19", " ", "  "]
    rng = random.Random(seed)  # noqa: S311
    return ["".join(rng.choices(pieces, k=rng.randint(1, 9))) for _ in range(count)]


def test_whitespace_and_word_characters_are_what_the_shortcuts_assume() -> None:
    space = re.compile(r"\s")
    word = re.compile(r"\w")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        is_space = char.isspace()
        assert is_space == bool(space.match(char)), hex(code)
        assert (char.isalnum() or char == "_") == bool(word.match(char)), hex(code)
        if is_space:
            assert code < 0x3001, hex(code)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_title_features_equal_the_regex_definition(seed: int) -> None:
    titles = TRICKY_TITLES + _random_titles(3000, seed)
    originals: list[Any] = [
        [None, "\\N", title, title + "x"][i % 4] for i, title in enumerate(titles)
    ]
    expected = np.array(
        [_reference_title_features(t, o) for t, o in zip(titles, originals, strict=True)],
        dtype=np.float32,
    )
    singles = np.array(
        [title_features(t, o) for t, o in zip(titles, originals, strict=True)], dtype=np.float32
    )
    np.testing.assert_array_equal(singles, expected)
    start = SCHEMA.title_offset
    batch = transform_columns({"primaryTitle": titles, "originalTitle": originals}, SCHEMA)
    np.testing.assert_array_equal(batch[:, start : start + len(TITLE_FEATURES)], expected)
    records = [
        {"primaryTitle": t, "originalTitle": o} for t, o in zip(titles, originals, strict=True)
    ]
    np.testing.assert_array_equal(transform_records(records, SCHEMA), batch)


def test_api_style_columns_take_the_vectorised_path_with_the_same_result() -> None:
    rows = 2000
    rng = random.Random(5)  # noqa: S311
    titles = _random_titles(rows, 9)
    records: list[dict[str, Any]] = []
    for i, title in enumerate(titles):
        record: dict[str, Any] = {"primaryTitle": title}
        if i % 3:
            record["startYear"] = rng.choice([None, 1870, 2050, 1994, 1994.0])
        if i % 4:
            record["runtimeMinutes"] = rng.choice([None, 1, 1000, 90])
        if i % 5:
            record["isAdult"] = rng.choice([None, True, False])
        if i % 2:
            record["genres"] = rng.choice(
                [None, [], ["Drama"], ["Drama", "Drama"], ["Crime", "Drama", "Sci-Fi"]]
            )
        if i % 7 == 0:
            record["originalTitle"] = rng.choice([None, title, "Other"])
        record["titleType"] = rng.choice([None, "movie"])
        records.append(record)
    fields = ("primaryTitle", "originalTitle", "isAdult", "startYear", "runtimeMinutes")
    columns: dict[str, Any] = {f: [r.get(f) for r in records] for f in fields}
    columns["genres"] = [r.get("genres") for r in records]
    columns["titleType"] = [r.get("titleType") for r in records]
    expected = transform_records(records, SCHEMA)
    np.testing.assert_array_equal(transform_columns(columns, SCHEMA), expected)
    # The same genres as the file's strings, and tuples, give the same matrix.
    columns["genres"] = [None if g is None else ",".join(g) for g in columns["genres"]]
    np.testing.assert_array_equal(transform_columns(columns, SCHEMA), expected)
    columns["genres"] = [
        None if g is None else tuple(g.split(",")) if g else () for g in columns["genres"]
    ]
    np.testing.assert_array_equal(transform_columns(columns, SCHEMA), expected)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"startYear": [1999, True]}, "row 1: startYear: must be an integer, not a boolean"),
        ({"startYear": [1999, 1999.5]}, "row 1: startYear: must be a whole number"),
        ({"startYear": [1999, 10**400]}, "row 1: startYear: 1000"),
        ({"runtimeMinutes": [None, 0]}, "row 1: runtimeMinutes: 0 is outside"),
        ({"isAdult": [True, 2]}, "row 1: isAdult: must be 0 or 1, got 2"),
        ({"isAdult": [None, 10**400]}, "row 1: isAdult: must be 0 or 1"),
        ({"genres": [["Drama"], ["Drama", "Noir"]]}, "row 1: genres: unknown genre 'Noir'"),
        ({"genres": [["Drama"], [["Drama"]]]}, "row 1: genres: genre names must be strings"),
        ({"genres": [("Drama",), (3,)]}, "row 1: genres: genre names must be strings"),
        ({"genres": ["Drama", "Drama,"]}, "row 1: genres: unknown genre ''"),
        ({"genres": ["Drama", 42]}, "row 1: genres: must be a comma-separated string"),
        ({"primaryTitle": ["A", ""]}, "row 1: primaryTitle"),
        ({"primaryTitle": ["A", "\\N"]}, "row 1: primaryTitle"),
        ({"originalTitle": ["A", 5]}, "row 1: originalTitle: must be a string"),
        ({"titleType": ["movie", "short"]}, "row 1: titleType"),
        ({"titleType": ["movie", 5]}, "row 1: titleType"),
    ],
)
def test_vectorised_columns_report_the_per_row_errors(
    columns: dict[str, Any], message: str
) -> None:
    batch = {"primaryTitle": ["A", "B"]} | columns
    with pytest.raises(FeatureError, match=re.escape(message)) as caught:
        transform_columns(batch, SCHEMA)
    assert caught.value.row == 1


def test_unusual_but_valid_column_values_use_the_per_row_path() -> None:
    columns: dict[str, Any] = {
        "primaryTitle": np.array(["A", "Rocky II"], dtype=object),
        "originalTitle": ["A", float("nan")],
        "startYear": ["1999", np.int64(2000)],
        "isAdult": ["1", "\\N"],
        "genres": [["Drama"], "Crime,Drama"],
        "titleType": np.array(["movie", "\\N"], dtype=object),
    }
    records = [{k: v[i] for k, v in columns.items()} for i in range(2)]
    np.testing.assert_array_equal(
        transform_columns(columns, SCHEMA), transform_records(records, SCHEMA)
    )


def test_transform_record_into_a_reused_buffer() -> None:
    buffer = np.full((1, SCHEMA.n_features), 7.0, dtype=np.float32)
    for record in RECORDS:
        assert transform_record(record, SCHEMA, buffer) is buffer
        np.testing.assert_array_equal(buffer, transform_record(record, SCHEMA))


def test_record_genres_lists_with_problems() -> None:
    with pytest.raises(FeatureError, match="unknown genre 'Noir'"):
        transform_record({"primaryTitle": "A", "genres": ["Drama", "Noir"]}, SCHEMA)
    with pytest.raises(FeatureError, match="must be strings"):
        transform_record({"primaryTitle": "A", "genres": ["Drama", ["Drama"]]}, SCHEMA)
