"""Ingest of title.basics and title.ratings: streaming, columnar, with every bad row accounted for.

The files are read in blocks of whole lines (gzip is detected by content), and each block is parsed
by polars as one string column per line, then split on tabs. Doing the split ourselves, rather than
letting a CSV reader map fields, is what lets us *count* short and long rows instead of having them
padded or truncated silently; quoting is off, since IMDb never quotes although titles contain `"`.
Invalid UTF-8 is decoded lossily and the affected rows are counted. Only rows of the kept title
types are retained after the structural checks, so memory follows the number of movies, not the
11 M rows of the real title.basics.

Every data row ends up in exactly one bucket: kept, skipped as another title type, unrated (for
basics) or not joined (for ratings), or bad with the first reason that applies. The bad share is
bad rows / examined rows, where examined rows are all ratings rows plus the basics rows of kept
types and structurally broken basics rows (whose type cannot be trusted).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import polars as pl

from imdb_model.schema import GENRES, RATING_RANGE, RUNTIME_MINUTES_RANGE, START_YEAR_RANGE
from imdb_trainer.formats import (
    BASICS,
    BASICS_COLUMNS,
    GZIP_MAGIC,
    NULL,
    RATINGS,
    RATINGS_COLUMNS,
    DataError,
    find_file,
)

CHUNK_BYTES: Final[int] = 32 << 20
# Polars needs some field separator; this control byte never occurs in valid IMDb data. Should it
# occur, it is replaced with an invalid UTF-8 byte so that the row is counted as bad_utf8.
_LINE_SEPARATOR: Final[str] = "\x1f"
_DIGITS: Final[str] = r"^[0-9]+$"
_DECIMAL: Final[str] = r"^[0-9]+(\.[0-9]+)?$"
_TCONST: Final[str] = r"^tt[0-9]+$"
DEFAULT_TITLE_TYPES: Final[tuple[str, ...]] = ("movie",)

Progress = Callable[[int], None]


@dataclass
class FileReport:
    """Row accounting of one input file."""

    path: str
    sha256: str = ""
    rows: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    info: dict[str, int] = field(default_factory=dict)

    @property
    def bad_rows(self) -> int:
        """All bad rows of this file."""
        return sum(self.bad.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad": dict(sorted(self.bad.items())),
            "info": dict(sorted(self.info.items())),
        }


@dataclass
class DataQuality:
    """The accounting of one ingest."""

    basics: FileReport
    ratings: FileReport
    title_types: tuple[str, ...]
    examined_rows: int = 0
    kept_rows: int = 0

    @property
    def bad_rows(self) -> int:
        """Bad rows in both files."""
        return self.basics.bad_rows + self.ratings.bad_rows

    @property
    def bad_share(self) -> float:
        """bad rows / examined rows (0 for empty input)."""
        return self.bad_rows / self.examined_rows if self.examined_rows else 0.0

    @property
    def fingerprint(self) -> str:
        """sha256 over both files' decompressed contents: the data's identity."""
        text = f"{BASICS}:{self.basics.sha256}\n{RATINGS}:{self.ratings.sha256}\n"
        return hashlib.sha256(text.encode()).hexdigest()

    def bad_by_reason(self) -> dict[str, int]:
        """`file:reason` -> count, for reports and plots."""
        counts = {f"basics:{k}": v for k, v in self.basics.bad.items()}
        counts.update({f"ratings:{k}": v for k, v in self.ratings.bad.items()})
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the manifest)."""
        return {
            "fingerprint": self.fingerprint,
            "title_types": list(self.title_types),
            "examined_rows": self.examined_rows,
            "kept_rows": self.kept_rows,
            "bad_rows": self.bad_rows,
            "bad_share": self.bad_share,
            "files": {BASICS: self.basics.to_dict(), RATINGS: self.ratings.to_dict()},
        }


@dataclass
class IngestResult:
    """Clean, joined rows plus their accounting."""

    frame: pl.DataFrame
    quality: DataQuality


def _blocks(path: Path, digest: Any, progress: Progress | None) -> Iterator[bytes]:
    """Blocks of whole lines of the decompressed file; feeds `digest` as it goes."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        carry = b""
        try:
            while block := stream.read(CHUNK_BYTES):
                digest.update(block)
                if progress is not None:
                    progress(raw.tell())
                block = carry + block
                cut = block.rfind(b"\n") + 1
                carry = block[cut:]
                if cut:
                    yield block[:cut]
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: cannot read the file: {exc}") from exc
        if carry:
            yield carry + b"\n"


def _structural(block: bytes, columns: tuple[str, ...]) -> pl.DataFrame:
    """Split a block of lines into string fields plus a `reason` for broken rows."""
    if _LINE_SEPARATOR.encode() in block:
        block = block.replace(_LINE_SEPARATOR.encode(), b"\xff")
    lines = pl.read_csv(
        io.BytesIO(block),
        has_header=False,
        separator=_LINE_SEPARATOR,
        quote_char=None,
        encoding="utf8-lossy",
        schema={"line": pl.String},
        truncate_ragged_lines=True,
        raise_if_empty=False,
    )
    line = pl.col("line")
    tabs = line.str.count_matches("\t", literal=True)
    parts = line.str.split_exact("\t", len(columns) - 1).struct.rename_fields(list(columns))
    reason = (
        pl.when(tabs.is_null() | (tabs != len(columns) - 1))
        .then(pl.lit("wrong_field_count"))
        .when(line.str.contains("\ufffd", literal=True))
        .then(pl.lit("bad_utf8"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return lines.select(parts.alias("parts"), reason.alias("reason")).unnest("parts")


def _read(
    path: Path,
    columns: tuple[str, ...],
    report: FileReport,
    keep: Callable[[pl.DataFrame], pl.DataFrame],
    progress: Progress | None,
) -> pl.DataFrame:
    """Structurally valid rows that `keep` retains, with `\\N` as null; counts the rest."""
    digest = hashlib.sha256()
    kept: list[pl.DataFrame] = []
    first = True
    for raw_block in _blocks(path, digest, progress):
        block = raw_block
        if first:
            first = False
            end = block.find(b"\n")
            header = block[:end].decode("utf-8", "replace").rstrip("\r")
            if header != "\t".join(columns):
                raise DataError(
                    f"{path}: unexpected header {header[:200]!r}, expected {chr(9).join(columns)!r}"
                )
            block = block[end + 1 :]
            if not block:
                continue
        frame = _structural(block, columns)
        report.rows += frame.height
        broken = frame.filter(pl.col("reason").is_not_null())
        for reason, count in broken.group_by("reason").len().iter_rows():
            report.bad[reason] = report.bad.get(reason, 0) + count
        good = frame.filter(pl.col("reason").is_null()).drop("reason")
        kept.append(keep(good))
    if first:
        raise DataError(f"{path}: the file is empty (no header line)")
    report.sha256 = digest.hexdigest()
    schema = dict.fromkeys(columns, pl.String)
    frame = pl.concat(kept) if kept else pl.DataFrame(schema=schema)
    return frame.with_columns(
        pl.when(pl.col(c) == NULL).then(None).otherwise(pl.col(c)).alias(c) for c in columns
    )


def _classify(frame: pl.DataFrame, reason: pl.Expr, report: FileReport) -> pl.DataFrame:
    """Count rows by their first failing check; return the valid ones."""
    frame = frame.with_columns(reason.alias("reason"))
    for name, count in frame.filter(pl.col("reason").is_not_null()).group_by("reason").len().rows():
        report.bad[name] = report.bad.get(name, 0) + count
    return frame.filter(pl.col("reason").is_null()).drop("reason")


def _integer_checks(column: str, bounds: tuple[int, int], label: str) -> list[tuple[pl.Expr, str]]:
    value = pl.col(column)
    number = value.cast(pl.Int64, strict=False)
    return [
        (value.is_not_null() & ~value.str.contains(_DIGITS), f"non_numeric_{label}"),
        (
            value.is_not_null() & (number.is_null() | ~number.is_between(*bounds)),
            f"{label}_out_of_range",
        ),
    ]


def _first_failure(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    expr: Any = pl
    for condition, name in checks:
        expr = expr.when(condition).then(pl.lit(name))
    result: pl.Expr = expr.otherwise(pl.lit(None, dtype=pl.String))
    return result


def _validate_basics(frame: pl.DataFrame, report: FileReport) -> pl.DataFrame:
    title = pl.col("primaryTitle")
    genres = pl.col("genres")
    unknown_genre = genres.str.split(",").list.eval(~pl.element().is_in(list(GENRES))).list.any()
    checks = [
        (~pl.col("tconst").str.contains(_TCONST), "bad_tconst"),
        (~pl.col("tconst").is_first_distinct(), "duplicate_tconst"),
        (title.is_null() | (title == ""), "missing_title"),
        (pl.col("isAdult").is_not_null() & ~pl.col("isAdult").is_in(["0", "1"]), "bad_is_adult"),
        *_integer_checks("startYear", START_YEAR_RANGE, "start_year"),
        *_integer_checks("runtimeMinutes", RUNTIME_MINUTES_RANGE, "runtime"),
        (genres.is_not_null() & unknown_genre, "unknown_genre"),
    ]
    # An empty genres field means "no genres", like \N (the model treats both as missing).
    frame = frame.with_columns(pl.when(genres == "").then(None).otherwise(genres).alias("genres"))
    valid = _classify(frame, _first_failure(checks), report)
    return valid.select(
        "tconst",
        "titleType",
        "primaryTitle",
        "originalTitle",
        pl.col("isAdult").cast(pl.Int8),
        pl.col("startYear").cast(pl.Int32),
        pl.col("runtimeMinutes").cast(pl.Int32),
        "genres",
    )


def _validate_ratings(frame: pl.DataFrame, report: FileReport) -> pl.DataFrame:
    rating = pl.col("averageRating")
    number = rating.cast(pl.Float64, strict=False)
    votes = pl.col("numVotes")
    checks = [
        (~pl.col("tconst").str.contains(_TCONST), "bad_tconst"),
        (~pl.col("tconst").is_first_distinct(), "duplicate_tconst"),
        (rating.is_null(), "missing_rating"),
        (~rating.str.contains(_DECIMAL), "non_numeric_rating"),
        (~number.is_between(*RATING_RANGE), "rating_out_of_range"),
        (votes.is_null() | ~votes.str.contains(_DIGITS), "bad_num_votes"),
    ]
    valid = _classify(frame, _first_failure(checks), report)
    return valid.select("tconst", number.alias("averageRating"), votes.cast(pl.Int64, strict=False))


def ingest(
    data_dir: Path,
    title_types: tuple[str, ...] = DEFAULT_TITLE_TYPES,
    progress: Callable[[str, int], Progress] | None = None,
) -> IngestResult:
    """Read, validate and join both files of `data_dir`.

    `progress(label, total_bytes)` may return a callback that receives the number of (compressed)
    bytes read so far.
    """
    basics_path = find_file(data_dir, BASICS)
    ratings_path = find_file(data_dir, RATINGS)
    basics = FileReport(path=str(basics_path))
    ratings = FileReport(path=str(ratings_path))
    kept_types = list(title_types)
    other_types = Counter[str]()

    def keep_types(frame: pl.DataFrame) -> pl.DataFrame:
        mask = pl.col("titleType").is_in(kept_types)
        other_types["rows"] += frame.height - frame.select(mask.sum()).item()
        return frame.filter(mask)

    def bar(path: Path, label: str) -> Progress | None:
        return progress(label, path.stat().st_size) if progress is not None else None

    basics_raw = _read(basics_path, BASICS_COLUMNS, basics, keep_types, bar(basics_path, BASICS))
    ratings_raw = _read(
        ratings_path, RATINGS_COLUMNS, ratings, lambda f: f, bar(ratings_path, RATINGS)
    )
    examined = basics_raw.height + basics.bad_rows + ratings.rows
    titles = _validate_basics(basics_raw, basics)
    scores = _validate_ratings(ratings_raw, ratings)
    joined = titles.join(scores, on="tconst", how="inner")
    basics.info = {
        "other_title_types": other_types["rows"],
        "unrated": titles.height - joined.height,
    }
    ratings.info = {"not_a_kept_title": scores.height - joined.height}
    quality = DataQuality(
        basics=basics,
        ratings=ratings,
        title_types=tuple(title_types),
        examined_rows=examined,
        kept_rows=joined.height,
    )
    return IngestResult(frame=joined.sort("tconst"), quality=quality)
