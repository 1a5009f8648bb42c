"""The one feature transformation: raw title.basics fields -> float32 feature matrix.

Two entry points share every rule:

* `transform_columns` takes a columnar batch (the trainer: numpy arrays or sequences per field;
  the API's batches: one list per field), vectorised with numpy: numbers as arrays, genres by one
  dict lookup per token, titles by classifying the code points of all titles at once;
* `transform_record` / `transform_records` take one dict or a list of dicts (the API), in plain
  Python because numpy's per-call overhead would dominate a single row.

Both parse scalars with the same helpers (the vectorised paths handle plain values and hand
anything else to them), so they accept and reject exactly the same values and give bit-identical
matrices (tests check it, also against the original one-regex-per-title definition). Missing
values never reach the model as NaN: each numeric input has a 0 placeholder plus a missingness
indicator, which trees and the linear baseline both handle, and which keeps the ONNX graph free
of NaN semantics.

Input fields are named as in title.basics: `primaryTitle` (required), `originalTitle`,
`titleType`, `isAdult`, `startYear`, `runtimeMinutes`, `genres` (comma-separated string as in the
file, or a list of names). Missing is `None`, a float NaN, or the file's `\\N`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain, repeat
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
# The sequel regex costs ~0.8 us a title, so both paths mostly decide without it, exactly:
# * its first branch matches iff a whitespace-delimited word, cut at its first `_SEQUEL_STOP`, is
#   one of `_SEQUEL_TOKENS` (`re`'s \s, `str.split` and `str.isspace` share one whitespace set);
# * its second branch needs "Part", "Chapter" or "Vol" in the title (`_second_branch_at`).
# The tests check both against the regex on many titles.
_SEQUEL_TOKENS: Final[frozenset[str]] = frozenset(
    [str(i) for i in range(2, 20)]
    + ["II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"]
)
_SEQUEL_STOPS: Final[str] = ":,.!?)"
_SEQUEL_STOP: Final[re.Pattern[str]] = re.compile(r"[:,.!?)]")
_SEQUEL_WORDS: Final[tuple[str, ...]] = ("Part", "Chapter", "Vol")
_LONGEST_TOKEN: Final[int] = max(map(len, _SEQUEL_TOKENS))

# Character classes of the columnar title path, one table lookup per code point. Every Unicode
# whitespace character is at most U+3000 (a test checks it), so code points beyond the table
# (clipped to its last entry) belong to no class.
_SPACE, _DIGIT_CLASS, _COLON, _QUOTE, _TOKEN_START, _STOP, _WORD, _BEYOND = (
    1, 2, 4, 8, 16, 32, 64, 128
)  # fmt: skip
_CLASS_LIMIT: Final[int] = 0x3001
_TOKEN_KEYS: Final[npt.NDArray[np.uint64]] = np.array(
    sorted(sum(ord(c) << (8 * i) for i, c in enumerate(token)) for token in _SEQUEL_TOKENS),
    dtype=np.uint64,
)
_SEQUEL_WORD_POINTS: Final[tuple[tuple[int, ...], ...]] = tuple(
    tuple(map(ord, word)) for word in ("Part", "Chapter", "Volume", "Vol.")
)
_PADDING: Final[int] = max(map(len, _SEQUEL_WORD_POINTS)) + _LONGEST_TOKEN


def _character_classes() -> npt.NDArray[np.uint8]:
    table = np.zeros(_CLASS_LIMIT + 1, dtype=np.uint8)
    table[[c for c in range(_CLASS_LIMIT) if chr(c).isspace()]] |= _SPACE | _STOP
    table[[ord(c) for c in "0123456789"]] |= _DIGIT_CLASS
    table[ord(":")] |= _COLON
    table[ord('"')] |= _QUOTE
    table[[ord(c) for c in "123456789IVX"]] |= _TOKEN_START
    table[[ord(c) for c in _SEQUEL_STOPS]] |= _STOP
    table[[c for c in range(_CLASS_LIMIT) if chr(c).isalnum() or c == ord("_")]] |= _WORD
    table[_CLASS_LIMIT] = _BEYOND  # every code point beyond the table
    return table


_CLASSES: Final[npt.NDArray[np.uint8]] = _character_classes()
_NONE_TYPE: Final[type] = type(None)


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


def _second_branch_at(title: str, at: int, word: str) -> bool:
    r"""Whether `_SEQUEL`'s second branch matches at `title[at:]`, which starts with `word`.

    That is `\b(?:Part|Chapter|Volume|Vol\.)\s+\S`: no word character (`\w`: alphanumeric or
    "_") just before, then whitespace, then something else, all within the title.
    """
    if at > 0 and (title[at - 1].isalnum() or title[at - 1] == "_"):
        return False
    rest = title[at + len(word) :]
    if word == "Vol":
        if rest.startswith("ume") and _space_then_more(rest[3:]):
            return True
        if not rest.startswith("."):
            return False
        rest = rest[1:]
    return _space_then_more(rest)


def _space_then_more(text: str) -> bool:
    r"""`\s+\S` at the start of `text`."""
    return text[:1].isspace() and not text.isspace()


def _is_sequel(title: str, words: list[str]) -> bool:
    """`_SEQUEL.search(title) is not None`, given `words = title.split()`."""
    if _SEQUEL_STOP.search(title) is None:
        if not _SEQUEL_TOKENS.isdisjoint(words):
            return True
    elif any(_SEQUEL_STOP.split(word, 1)[0] in _SEQUEL_TOKENS for word in words):
        return True
    for word in _SEQUEL_WORDS:
        at = title.find(word)
        while at >= 0:
            if _second_branch_at(title, at, word):
                return True
            at = title.find(word, at + 1)
    return False


def title_features(primary: str, original: Any) -> tuple[float, ...]:
    """Features known from the title alone, in the order of `schema.TITLE_FEATURES`."""
    if _is_null(original):
        original = primary
    elif not isinstance(original, str):
        raise FeatureError("originalTitle", f"must be a string, got {original!r}")
    words = primary.split()
    return (
        float(len(primary)),
        float(len(words)),
        1.0 if _DIGIT.search(primary) else 0.0,
        1.0 if _is_sequel(primary, words) else 0.0,
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


def _genre_columns(genres: Any, schema: FeatureSchema) -> Iterable[int]:
    """The feature columns of a record's genres (deduplicated)."""
    if type(genres) is list:
        index = schema.genre_index
        try:
            return {index[genre] for genre in genres}
        except (KeyError, TypeError):  # not a known genre name: parse_genres says which
            pass
    offset = schema.genre_offset
    return [offset + p for p in parse_genres(genres, schema.genres)]


def _fill_record(record: Mapping[str, Any], schema: FeatureSchema, row: Any) -> None:
    """Write one record's non-zero features into `row` (a zeroed list or 1-D float32 array).

    The common JSON types take inline fast paths; anything else goes through the same parse_*
    helpers as the columnar path, which accept and reject exactly what they always did.
    """
    for name, bounds, value_column, missing_column in (
        ("startYear", schema.start_year_range, _YEAR, _YEAR_MISSING),
        ("runtimeMinutes", schema.runtime_minutes_range, _RUNTIME, _RUNTIME_MISSING),
    ):
        number = record.get(name)
        if type(number) is not int or not bounds[0] <= number <= bounds[1]:
            number = parse_integer(number, name, bounds)
        if number is None:
            row[missing_column] = 1.0
        else:
            row[value_column] = float(number)
    adult = record.get("isAdult")
    if adult is True or (adult is not None and adult is not False and parse_is_adult(adult)):
        row[_ADULT] = 1.0
    count = 0
    for column in _genre_columns(record.get("genres"), schema):
        row[column] = 1.0
        count += 1
    if count:
        row[_GENRE_COUNT] = float(count)
    else:
        row[_GENRES_MISSING] = 1.0
    title = record.get("primaryTitle")
    if type(title) is not str or not title or title == NULL:
        title = parse_title(title)
    start = schema.title_offset
    row[start : start + _N_TITLE] = title_features(title, record.get("originalTitle"))
    title_type = record.get("titleType")
    if title_type is not None or len(schema.title_types) > 1:
        type_column = _type_column(title_type, schema)
        if type_column is not None:
            row[type_column] = 1.0


def _record_row(record: Mapping[str, Any], schema: FeatureSchema) -> list[float]:
    row = [0.0] * schema.n_features
    _fill_record(record, schema, row)
    return row


def transform_record(
    record: Mapping[str, Any], schema: FeatureSchema, out: FeatureMatrix | None = None
) -> FeatureMatrix:
    """One record -> a (1, n_features) float32 matrix. Raises FeatureError on invalid input.

    With `out` (a C-contiguous (1, n_features) float32 matrix, e.g. a buffer reused across
    calls) the features are written there and `out` is returned.
    """
    if out is None:
        out = np.zeros((1, schema.n_features), dtype=np.float32)
    else:
        out.fill(0.0)
    _fill_record(record, schema, out[0])
    return out


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


_INTEGER_TYPES: Final[frozenset[type]] = frozenset({int, float, _NONE_TYPE})
_ADULT_TYPES: Final[frozenset[type]] = frozenset({bool, int, float, _NONE_TYPE})


def _number_array(values: Any, types: frozenset[type]) -> npt.NDArray[Any] | None:
    """A numeric array of `values` when numpy can check them exactly like the parsers, else None.

    A numeric numpy array is used as is. A list whose elements' types are all in `types` (plain
    Python numbers and None) becomes float64 with NaN for None; any other element (strings,
    booleans for integer fields, numpy scalars, objects) is left to the per-value parsers.
    """
    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "iuf" else None
    if type(values) is not list or not types.issuperset(map(type, values)):
        return None
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond float64: the per-value parser reports it
        return None


def _integer_column(
    values: Any, n: int, name: str, bounds: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """An integer field as float64 with NaN for missing, validated like `parse_integer`."""
    if values is None:
        return np.full(n, np.nan)
    numbers = _number_array(values, _INTEGER_TYPES)
    if numbers is not None:
        column = numbers.astype(np.float64, copy=False)
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
    numbers = _number_array(values, _ADULT_TYPES)
    if numbers is not None:
        column = np.nan_to_num(numbers.astype(np.float64), nan=0.0)
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


_GENRE_LIST_TYPES: Final[frozenset[type]] = frozenset({list, tuple, _NONE_TYPE})
_GENRE_STRING_TYPES: Final[frozenset[type]] = frozenset({str, _NONE_TYPE})
_TITLE_TYPES: Final[frozenset[type]] = frozenset({str})
_OPTIONAL_TEXT_TYPES: Final[frozenset[type]] = frozenset({str, _NONE_TYPE})


def _as_list(values: Any) -> list[Any]:
    return values if type(values) is list else list(values)


def _genres_fast(out: FeatureMatrix, genres: list[Any], schema: FeatureSchema) -> bool:
    """Genres of plain lists/strings by one dict lookup per token; False: use `_genres_into`."""
    kinds = set(map(type, genres))
    lists: list[Any]
    if kinds <= _GENRE_LIST_TYPES:
        lists = [value or () for value in genres] if _NONE_TYPE in kinds else genres
    elif kinds <= _GENRE_STRING_TYPES:
        lists = [value.split(",") if value and value != NULL else () for value in genres]
    else:
        return False
    tokens = list(chain.from_iterable(lists))
    try:
        columns = np.fromiter(map(schema.genre_index.__getitem__, tokens), np.intp, len(tokens))
    except (KeyError, TypeError):  # unknown or not a string: `_genres_into` names the row
        return False
    counts = np.fromiter(map(len, lists), np.intp, len(lists))
    out[np.repeat(np.arange(len(out)), counts), columns] = 1.0
    offset = schema.genre_offset
    present = out[:, offset : offset + len(schema.genres)].sum(axis=1)  # duplicates count once
    out[:, _GENRE_COUNT] = present
    out[:, _GENRES_MISSING] = present == 0
    return True


def _genres_into(out: FeatureMatrix, genres: Any, schema: FeatureSchema) -> None:
    if genres is None:
        out[:, _GENRES_MISSING] = 1.0
        return
    genres = _as_list(genres)
    if _genres_fast(out, genres, schema):
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


def _sequel_column(
    text: str,
    points: npt.NDArray[np.uint32],
    *,
    classes: npt.NDArray[np.uint8],
    after_space: npt.NDArray[np.bool_],
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
) -> npt.NDArray[np.bool_]:
    """`_SEQUEL.search(title) is not None` for joined titles (`ends` exclusive), with numpy."""
    size = len(points)
    space = (classes & _SPACE).astype(np.bool_)
    padded = np.append(points, np.zeros(_PADDING, dtype=np.uint32))
    sequel = np.zeros(len(starts), dtype=np.bool_)
    # First branch: a word that starts with a token character, cut at its first stop (space,
    # punctuation or the title's end), must be a token. The cut word is compared as a number
    # made of its (ASCII) characters.
    candidates = np.flatnonzero(after_space & (classes & _TOKEN_START).astype(np.bool_))
    if candidates.size:
        breaks = (classes & _STOP).astype(np.bool_)
        breaks[starts] = True  # the end of the previous title
        stops = np.append(np.flatnonzero(breaks), size)
        length = stops[np.searchsorted(stops, candidates, side="right")] - candidates
        key = np.zeros(len(candidates), dtype=np.uint64)
        foreign = length > _LONGEST_TOKEN
        for k in range(_LONGEST_TOKEN):
            char = padded[candidates + k].astype(np.uint64)
            char[length <= k] = 0
            foreign |= char >= 128
            key |= char << (8 * k)
        known = _TOKEN_KEYS[np.minimum(np.searchsorted(_TOKEN_KEYS, key), len(_TOKEN_KEYS) - 1)]
        hit = ~foreign & (known == key)
        sequel[np.searchsorted(starts, candidates[hit], side="right") - 1] = True
    # Second branch: after each "Part", "Chapter", "Volume" or "Vol." with no word character
    # (\w) just before it, whitespace and then something else within the title.
    following: npt.NDArray[np.intp] | None = None
    for word in _SEQUEL_WORD_POINTS:
        at = np.flatnonzero(points == word[0])
        for k in range(1, len(word)):
            at = at[padded[at + k] == word[k]]
        if not at.size:
            continue
        row = np.searchsorted(starts, at, side="right") - 1
        after = at + len(word)
        end = ends[row]
        ok = (after + 1 < end) & space[np.minimum(after, size - 1)]
        before = classes[np.maximum(at - 1, 0)]
        first = at == starts[row]
        ok &= first | ((before & _WORD) == 0)
        for i in np.flatnonzero(ok & ~first & ((before & _BEYOND) != 0)).tolist():
            previous = text[at[i] - 1]  # beyond the class table: ask Python
            ok[i] = not (previous.isalnum() or previous == "_")
        if following is None:
            following = np.append(np.flatnonzero(~space), size)
        ok &= following[np.searchsorted(following, after)] < end
        sequel[row[ok]] = True
    return sequel


def _titles_fast(
    out: FeatureMatrix, titles: list[Any], originals: list[Any] | None, start: int
) -> bool:
    """`title_features` for a block of plain strings, vectorised over the titles' characters.

    The titles are joined and their code points classified with numpy; only candidate sequel
    words are looked at in Python (see `_SEQUEL_TOKENS`). False: not plain valid strings; the
    per-row path handles them (and raises the exact error).
    """
    n = len(titles)
    if not _TITLE_TYPES.issuperset(map(type, titles)):
        return False
    lengths = np.fromiter(map(len, titles), np.intp, n)
    if not lengths.all() or NULL in titles:
        return False
    differs = np.zeros(n, dtype=np.bool_)
    if originals is not None:
        kinds = set(map(type, originals))
        if not kinds <= _OPTIONAL_TEXT_TYPES:
            return False
        differs = np.fromiter(map(operator.ne, originals, titles), np.bool_, n)
        if _NONE_TYPE in kinds:
            differs &= np.fromiter(map(operator.is_not, originals, repeat(None)), np.bool_, n)
        if NULL in originals:
            differs &= np.fromiter(map(operator.ne, originals, repeat(NULL)), np.bool_, n)
    text = "".join(titles)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    classes = np.take(_CLASSES, points, mode="clip")
    starts = np.zeros(n, dtype=np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    found = np.bitwise_or.reduceat(classes, starts)
    space = (classes & _SPACE).astype(np.bool_)
    after_space = np.empty_like(space)
    after_space[0] = True
    after_space[1:] = space[:-1]
    after_space[starts] = True  # a title's first character starts a word, as after a space
    words = np.add.reduceat(after_space > space, starts, dtype=np.intp)
    sequel = _sequel_column(
        text, points, classes=classes, after_space=after_space, starts=starts, ends=starts + lengths
    )
    digit, colon, quote = ((found & bit).astype(np.bool_) for bit in (_DIGIT_CLASS, _COLON, _QUOTE))
    block = out[:, start : start + _N_TITLE]
    for column, values in enumerate((lengths, words, digit, sequel, colon, quote, differs)):
        block[:, column] = values
    return True


def _titles_into(out: FeatureMatrix, titles: Any, originals: Any, schema: FeatureSchema) -> None:
    start = schema.title_offset
    n = len(out)
    for block in range(0, n, _BLOCK):
        stop = min(block + _BLOCK, n)
        if _titles_fast(
            out[block:stop],
            _as_list(titles[block:stop]),
            None if originals is None else _as_list(originals[block:stop]),
            start,
        ):
            continue
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
    if types is not None:
        types = _as_list(types)
        if _OPTIONAL_TEXT_TYPES.issuperset(map(type, types)):
            known = set(types) - {None, NULL}
            if known.issubset(schema.type_index):
                if len(schema.title_types) == 1:
                    return  # every value is the single type or missing: no one-hot columns
                default = schema.title_types[0]
                index = schema.type_index
                columns = [index[default if v is None or v == NULL else v] for v in types]
                out[np.arange(len(out)), np.asarray(columns, dtype=np.intp)] = 1.0
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
    if n == 0:
        return out
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
