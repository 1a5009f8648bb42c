"""The public IMDb file formats: names, columns, and where the files of a data directory are."""

from __future__ import annotations

from pathlib import Path
from typing import Final

BASICS: Final[str] = "title.basics"
RATINGS: Final[str] = "title.ratings"
BASICS_COLUMNS: Final[tuple[str, ...]] = (
    "tconst",
    "titleType",
    "primaryTitle",
    "originalTitle",
    "isAdult",
    "startYear",
    "endYear",
    "runtimeMinutes",
    "genres",
)
RATINGS_COLUMNS: Final[tuple[str, ...]] = ("tconst", "averageRating", "numVotes")
NULL: Final[str] = "\\N"
GZIP_MAGIC: Final[bytes] = b"\x1f\x8b"


class DataError(Exception):
    """The input data cannot be used: missing files, a wrong header, too many bad rows."""


def find_file(directory: Path, stem: str) -> Path:
    """`DIR/<stem>.tsv.gz` or else `DIR/<stem>.tsv`; gzip is detected by content, not by name."""
    for name in (f"{stem}.tsv.gz", f"{stem}.tsv"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory} has neither {stem}.tsv.gz nor {stem}.tsv")
