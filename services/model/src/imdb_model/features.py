"""The one feature transformation: raw title.basics fields -> float32 feature matrix.

Two entry points share every rule:

* `transform_columns` takes a columnar batch (the trainer: numpy arrays or sequences per field),
  vectorised with numpy where the data is numeric;
* `transform_record` / `transform_records` take one dict or a list of dicts (the API), in plain
  Python because numpy's per-call overhead would dominate a single row.

Both parse scalars with the same helpers, so they accept and reject exactly the same values and
give bit-identical matrices (a test checks it). Missing values never reach the model as NaN: each
numeric input has a 0 placeholder plus a missingness indicator, which trees and the linear
baseline both handle, and which keeps the ONNX graph free of NaN semantics.

Input fields are named as in title.basics: `primaryTitle` (required), `originalTitle`,
`titleType`, `isAdult`, `startYear`, `runtimeMinutes`, `genres` (comma-separated string as in the
file, or a list of names). Missing is `None`, a float NaN, or the file's `\\N`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from imdb_model.schema import TITLE_FEATURES, FeatureSchema

FeatureMatrix = npt.NDArray[np.float32]

NULL: Final[str] = "\\N"
# Column positions fixed by FeatureSchema.feature_names.
_YEAR, _YEAR_MISSING, _RUNTIME, _RUNTIME_MISSING, _ADULT, _GENRE_COUNT, _GENRES_MISSING = range(7)
_N_TITLE: Final[int] = len(TITLE_FEATURES)
# Rows per block when the batch path builds Python tuples, to bound transient memory.
_BLOCK: Final[int] = 65_536

_DIGIT = re.compile(r"[0-9]")
# A sequel marker: a standalone number 2-19 or Roman numeral II-XII, or "Part/Chapter/Volume X".
_SEQUEL = re.compile(
    r"(?:^|\s)(?:[2-9]|1[0-9]|II|III|IV|V|VI|VII|VIII|IX|X|XI|XII)(?=$|[\s:,.!?)])"
    r"|\b(?:Part|Chapter|Volume|Vol\.)\s+\S"
)


class FeatureError(ValueError):
    """A raw input that the schema does not accept; the API answers it with a 4xx.

    `field` names the offending input field, `row` its position in a batch (None for one record).
    """

    def __init__(self, field: str, message: str, row: int | None = None) -> None:
        self.field = field
        self.message = message
        self.row = row
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"{where}{field}: {message}")

    def at_row(self, row: int) -> FeatureError:
        """The same error, located in a batch."""
        return FeatureError(self.field, self.message, row)


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value == NULL
    return isinstance(value, float | np.floating) and math.isnan(value)


def parse_integer(value: Any, name: str, bounds: tuple[int, int]) -> int | None:
    """An integer field (startYear, runtimeMinutes): None when missing, else checked against bounds.

    Strings must be plain ASCII digits, as in the file; floats must be integral.
    """
    if _is_null(value):
        return None
    number: int
    if isinstance(value, bool | np.bool_):
        raise FeatureError(name, "must be an integer, not a boolean")
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, float | np.floating):
        if not math.isfinite(value) or not float(value).is_integer():
            raise FeatureError(name, f"must be a whole number, got {value!r}")
        number = int(value)
    elif isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise FeatureError(name, f"is not a number: {value!r}")
        number = int(value)
    else:
        raise FeatureError(name, f"must be an integer, got {type(value).__name__}")
    low, high = bounds
    if not low <= number <= high:
        raise FeatureError(name, f"{number} is outside the valid range [{low}, {high}]")
    return number


def parse_is_adult(value: Any) -> float:
    """isAdult: 0 or 1 (also as "0"/"1" or a boolean); missing means 0."""
    if _is_null(value):
        return 0.0
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        if value in ("0", "1"):
            return float(value)
    elif isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return float(value)
    raise FeatureError("isAdult", f"must be 0 or 1, got {value!r}")


@lru_cache(maxsize=8192)
def _genre_string_positions(value: str, vocabulary: tuple[str, ...]) -> tuple[int, ...]:
    # Cached: a data set has only a few thousand distinct genre strings, and a hit costs ~100 ns.
    return _genre_positions(value.split(","), vocabulary)


def _genre_positions(tokens: Iterable[Any], vocabulary: tuple[str, ...]) -> tuple[int, ...]:
    positions: set[int] = set()
    for token in tokens:
        if not isinstance(token, str):
            raise FeatureError("genres", f"genre names must be strings, got {token!r}")
        try:
            positions.add(vocabulary.index(token))
        except ValueError:
            raise FeatureError("genres", f"unknown genre {token!r}") from None
    return tuple(sorted(positions))


def parse_genres(value: Any, vocabulary: tuple[str, ...]) -> tuple[int, ...]:
    """Positions in `vocabulary` of the given genres (deduplicated); () when missing or empty."""
    if _is_null(value) or value == "":
        return ()
    if isinstance(value, str):
        return _genre_string_positions(value, vocabulary)
    if isinstance(value, list | tuple):
        return _genre_positions(value, vocabulary)
    raise FeatureError("genres", f"must be a comma-separated string or a list, got {value!r}")


def parse_title(value: Any, name: str = "primaryTitle") -> str:
    """A required, non-empty title."""
    if _is_null(value) or not isinstance(value, str) or value == "":
        raise FeatureError(name, "is required and must be a non-empty string")
    return value


def title_features(primary: str, original: Any) -> tuple[float, ...]:
    """Features known from the title alone, in the order of `schema.TITLE_FEATURES`."""
    if _is_null(original):
        original = primary
    elif not isinstance(original, str):
        raise FeatureError("originalTitle", f"must be a string, got {original!r}")
    return (
        float(len(primary)),
        float(len(primary.split())),
        1.0 if _DIGIT.search(primary) else 0.0,
        1.0 if _SEQUEL.search(primary) else 0.0,
        1.0 if ":" in primary else 0.0,
        1.0 if '"' in primary else 0.0,
        0.0 if original == primary else 1.0,
    )


def _type_column(value: Any, schema: FeatureSchema) -> int | None:
    if _is_null(value):
        value = schema.title_types[0]
    if value not in schema.type_index:
        raise FeatureError(
            "titleType", f"{value!r} is not one of the model's types {list(schema.title_types)}"
        )
    return schema.type_index[value]


def _record_row(record: Mapping[str, Any], schema: FeatureSchema) -> list[float]:
    row = [0.0] * schema.n_features
    year = parse_integer(record.get("startYear"), "startYear", schema.start_year_range)
    if year is None:
        row[_YEAR_MISSING] = 1.0
    else:
        row[_YEAR] = float(year)
    runtime = parse_integer(
        record.get("runtimeMinutes"), "runtimeMinutes", schema.runtime_minutes_range
    )
    if runtime is None:
        row[_RUNTIME_MISSING] = 1.0
    else:
        row[_RUNTIME] = float(runtime)
    row[_ADULT] = parse_is_adult(record.get("isAdult"))
    positions = parse_genres(record.get("genres"), schema.genres)
    if positions:
        row[_GENRE_COUNT] = float(len(positions))
        offset = schema.genre_offset
        for position in positions:
            row[offset + position] = 1.0
    else:
        row[_GENRES_MISSING] = 1.0
    start = schema.title_offset
    row[start : start + _N_TITLE] = title_features(
        parse_title(record.get("primaryTitle")), record.get("originalTitle")
    )
    type_column = _type_column(record.get("titleType"), schema)
    if type_column is not None:
        row[type_column] = 1.0
    return row


def transform_record(record: Mapping[str, Any], schema: FeatureSchema) -> FeatureMatrix:
    """One record -> a (1, n_features) float32 matrix. Raises FeatureError on invalid input."""
    return np.array([_record_row(record, schema)], dtype=np.float32)


def transform_records(records: Sequence[Mapping[str, Any]], schema: FeatureSchema) -> FeatureMatrix:
    """A list of records -> (len, n_features) float32. FeatureError.row locates a bad record."""
    out = np.empty((len(records), schema.n_features), dtype=np.float32)
    for start in range(0, len(records), _BLOCK):
        block = []
        for i in range(start, min(start + _BLOCK, len(records))):
            try:
                block.append(_record_row(records[i], schema))
            except FeatureError as exc:
                raise exc.at_row(i) from None
        out[start : start + len(block)] = np.array(block, dtype=np.float32).reshape(
            len(block), schema.n_features
        )
    return out


def _integer_column(
    values: Any, n: int, name: str, bounds: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """An integer field as float64 with NaN for missing, validated like `parse_integer`."""
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        column = values.astype(np.float64, copy=False)
        present = ~np.isnan(column)
        with np.errstate(invalid="ignore"):
            bad = present & (
                (column != np.floor(column)) | (column < bounds[0]) | (column > bounds[1])
            )
        if bad.any():
            row = int(np.argmax(bad))
            try:
                parse_integer(values[row], name, bounds)
            except FeatureError as exc:
                raise exc.at_row(row) from None
        return column
    column = np.empty(n, dtype=np.float64)
    for row, value in enumerate(values):
        try:
            number = parse_integer(value, name, bounds)
        except FeatureError as exc:
            raise exc.at_row(row) from None
        column[row] = np.nan if number is None else number
    return column


def _is_adult_column(values: Any, n: int) -> npt.NDArray[np.float64]:
    if values is None:
        return np.zeros(n)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        column = np.nan_to_num(values.astype(np.float64), nan=0.0)
        bad = (column != 0.0) & (column != 1.0)
        if bad.any():
            row = int(np.argmax(bad))
            raise FeatureError("isAdult", f"must be 0 or 1, got {values[row]!r}", row)
        return column
    column = np.empty(n, dtype=np.float64)
    for row, value in enumerate(values):
        try:
            column[row] = parse_is_adult(value)
        except FeatureError as exc:
            raise exc.at_row(row) from None
    return column


def _genres_into(out: FeatureMatrix, genres: Any, schema: FeatureSchema) -> None:
    if genres is None:
        out[:, _GENRES_MISSING] = 1.0
        return
    hit_rows: list[int] = []
    hit_cols: list[int] = []
    counts = np.zeros(len(out), dtype=np.float32)
    for row, value in enumerate(genres):
        try:
            positions = parse_genres(value, schema.genres)
        except FeatureError as exc:
            raise exc.at_row(row) from None
        counts[row] = len(positions)
        hit_rows.extend([row] * len(positions))
        hit_cols.extend(positions)
    out[
        np.asarray(hit_rows, dtype=np.intp),
        schema.genre_offset + np.asarray(hit_cols, dtype=np.intp),
    ] = 1.0
    out[:, _GENRE_COUNT] = counts
    out[:, _GENRES_MISSING] = counts == 0


def _titles_into(out: FeatureMatrix, titles: Any, originals: Any, schema: FeatureSchema) -> None:
    start = schema.title_offset
    n = len(out)
    for block in range(0, n, _BLOCK):
        stop = min(block + _BLOCK, n)
        feats = []
        for row in range(block, stop):
            try:
                original = None if originals is None else originals[row]
                feats.append(title_features(parse_title(titles[row]), original))
            except FeatureError as exc:
                raise exc.at_row(row) from None
        out[block:stop, start : start + _N_TITLE] = np.array(feats, dtype=np.float64).reshape(
            stop - block, _N_TITLE
        )


def _types_into(out: FeatureMatrix, types: Any, schema: FeatureSchema) -> None:
    if types is None and len(schema.title_types) == 1:
        return
    rows: list[int] = []
    cols: list[int] = []
    for row in range(len(out)):
        try:
            column = _type_column(None if types is None else types[row], schema)
        except FeatureError as exc:
            raise exc.at_row(row) from None
        if column is not None:
            rows.append(row)
            cols.append(column)
    out[np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)] = 1.0


def transform_columns(columns: Mapping[str, Any], schema: FeatureSchema) -> FeatureMatrix:
    """A columnar batch -> (n, n_features) float32.

    `columns` maps field names to equal-length numpy arrays or sequences; numeric fields may be
    float arrays with NaN for missing. Only `primaryTitle` is required.
    """
    titles = columns["primaryTitle"]
    n = len(titles)
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise FeatureError(name, f"has {len(values)} values, expected {n}")
    out = np.zeros((n, schema.n_features), dtype=np.float32)
    year = _integer_column(columns.get("startYear"), n, "startYear", schema.start_year_range)
    missing = np.isnan(year)
    out[:, _YEAR] = np.where(missing, 0.0, year)
    out[:, _YEAR_MISSING] = missing
    runtime = _integer_column(
        columns.get("runtimeMinutes"), n, "runtimeMinutes", schema.runtime_minutes_range
    )
    missing = np.isnan(runtime)
    out[:, _RUNTIME] = np.where(missing, 0.0, runtime)
    out[:, _RUNTIME_MISSING] = missing
    out[:, _ADULT] = _is_adult_column(columns.get("isAdult"), n)
    _genres_into(out, columns.get("genres"), schema)
    _titles_into(out, titles, columns.get("originalTitle"), schema)
    _types_into(out, columns.get("titleType"), schema)
    return out
