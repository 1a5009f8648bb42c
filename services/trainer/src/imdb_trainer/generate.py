"""A deterministic generator of IMDb-format data with a learnable rating structure.

`generate(out, rows=N, seed=S)` writes `title.basics.tsv[.gz]` and `title.ratings.tsv[.gz]` in
exactly the public format (tab-separated, header line, `\\N` for null, never quoted). N is the
number of rated titles, as in title.ratings; title.basics also holds unrated titles
(`unrated_ratio * N`, mostly TV episodes) and every kind of row the real files have: non-movie
types, missing values, remakes sharing a title, titles with `"` (some starting with one, which
trips CSV readers that honour quotes), non-ASCII titles. A small share of deliberately malformed
rows (`bad_share`) exercises the ingest's accounting.

The rating is a sum of genre, era, runtime and title effects, a few interactions that a linear
model cannot express, and noise, so a good model clearly beats a linear one and neither reaches
R^2 = 1. Everything is vectorised with numpy and polars: 1.6 M rated titles take seconds.
Same arguments, same bytes (gzip headers carry no timestamp).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

from imdb_model.schema import GENRES
from imdb_trainer.formats import BASICS, BASICS_COLUMNS, NULL, RATINGS, RATINGS_COLUMNS

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Share of each titleType among rated titles and among unrated ones (roughly IMDb's mix).
RATED_TYPES: Final[dict[str, float]] = {
    "movie": 0.50,
    "tvEpisode": 0.17,
    "short": 0.09,
    "tvSeries": 0.06,
    "tvMovie": 0.05,
    "video": 0.05,
    "tvMiniSeries": 0.02,
    "videoGame": 0.02,
    "tvSpecial": 0.02,
    "tvShort": 0.01,
    "tvPilot": 0.01,
}
UNRATED_TYPES: Final[dict[str, float]] = {
    "tvEpisode": 0.70,
    "short": 0.08,
    "movie": 0.08,
    "video": 0.05,
    "tvSeries": 0.04,
    "tvMovie": 0.02,
    "videoGame": 0.01,
    "tvMiniSeries": 0.01,
    "tvSpecial": 0.005,
    "tvShort": 0.004,
    "tvPilot": 0.001,
}
TYPE_EFFECT: Final[dict[str, float]] = {
    "tvEpisode": 0.8,
    "tvSeries": 0.6,
    "tvMiniSeries": 0.7,
    "videoGame": 0.5,
    "short": 0.3,
    "video": -0.2,
}
# (popularity weight, rating effect) per genre.
GENRE_TABLE: Final[dict[str, tuple[float, float]]] = {
    "Action": (6, -0.25),
    "Adult": (1, -0.8),
    "Adventure": (4, 0.0),
    "Animation": (3, 0.35),
    "Biography": (2, 0.55),
    "Comedy": (14, -0.15),
    "Crime": (5, 0.1),
    "Documentary": (10, 0.9),
    "Drama": (20, 0.3),
    "Family": (3, -0.1),
    "Fantasy": (2, -0.2),
    "Film-Noir": (0.3, 0.5),
    "Game-Show": (0.3, -0.3),
    "History": (2, 0.5),
    "Horror": (5, -1.0),
    "Music": (3, 0.45),
    "Musical": (1, 0.1),
    "Mystery": (2, -0.05),
    "News": (0.5, 0.2),
    "Reality-TV": (0.5, -0.6),
    "Romance": (5, -0.05),
    "Sci-Fi": (2, -0.35),
    "Short": (1, 0.2),
    "Sport": (1, 0.3),
    "Talk-Show": (0.3, -0.2),
    "Thriller": (5, -0.4),
    "War": (1, 0.4),
    "Western": (1, 0.1),
}
_WORD_TEXT: Final[str] = (
    "Love Night Day Man Woman House City Dead Last Dark Blood Girl Boy World King "
    "Queen Secret Summer Winter Story Life Time Road River Moon Sun Star Fire Water "
    "Heart Death Dream Shadow Ghost War Game Money Island Mountain Sea Wild Lost "
    "Little Big Black White Red Blue Golden Silent Broken Last First Final Eternal "
    "Hidden Strange Lonely Happy Sad Journey Return Revenge Escape Promise Letter "
    "Song Dance Kiss Angel Devil Soldier Doctor Stranger Family Father Mother "
    "Brother Sister Children Friends Lovers Killer Hunter Detective Prince Princess "
    "Garden Forest Desert Storm Rain Snow Wind Train Ship Hotel Street Empire "
    "Kingdom Legend Mystery Paradise Heaven Hell Memory Silence Truth Lies Café Niño "
    "Über Ærø Amélie Mañana Straße 東京 Москва Ελλάδα "
)
WORDS: Final[tuple[str, ...]] = tuple(_WORD_TEXT.split())
SEQUEL_SUFFIXES: Final[tuple[str, ...]] = (
    " 2",
    " 3",
    " II",
    " III",
    ": Part 2",
    " 4",
    ": Chapter 3",
)
MAX_GENRES: Final[int] = 3


@dataclass(frozen=True)
class GeneratedData:
    """What `generate` wrote."""

    basics_path: Path
    ratings_path: Path
    basics_rows: int
    ratings_rows: int
    malformed_basics_rows: int
    malformed_ratings_rows: int


def _choice(rng: np.random.Generator, table: dict[str, float], n: int) -> npt.NDArray[np.str_]:
    names = list(table)
    weights = np.array([table[k] for k in names])
    return np.array(names)[rng.choice(len(names), size=n, p=weights / weights.sum())]


def _genres(rng: np.random.Generator, n: int) -> BoolArray:
    """Multi-hot genres: 1-3 distinct genres by popularity."""
    weights = np.array([GENRE_TABLE[g][0] for g in GENRES])
    picks = rng.choice(len(GENRES), size=(n, MAX_GENRES), p=weights / weights.sum())
    count = rng.choice([1, 2, 3], size=n, p=[0.45, 0.35, 0.20])
    hot = np.zeros((n, len(GENRES)), dtype=bool)
    for slot in range(MAX_GENRES):
        keep = count > slot
        hot[np.nonzero(keep)[0], picks[keep, slot]] = True
    return hot


def _titles(rng: np.random.Generator, n: int) -> pl.Series:
    """Titles from a small vocabulary, with sequels, subtitles, years, quotes and remakes."""
    # Strings are built by polars from integer indices: numpy string arrays convert slowly.
    words = pl.Series(WORDS)
    k = rng.choice([1, 2, 3, 4, 5], size=n, p=[0.25, 0.35, 0.2, 0.12, 0.08])
    picks = rng.integers(0, len(words), size=(n, 5))
    frame = pl.DataFrame({f"w{j}": words.gather(picks[:, j]) for j in range(5)}).with_columns(
        k=pl.Series(k), the=pl.Series(rng.random(n) < 0.3)
    )
    parts = [pl.when(pl.col("the")).then(pl.lit("The"))]
    parts += [pl.when(pl.col("k") > j).then(pl.col(f"w{j}")) for j in range(5)]
    title = frame.select(t=pl.concat_str(parts, separator=" ", ignore_nulls=True))["t"]

    def decorate(series: pl.Series, share: float, make: pl.Series) -> pl.Series:
        mask = pl.Series(rng.random(n) < share)
        return pl.select(pl.when(mask).then(make).otherwise(series)).to_series()

    sequel = pl.Series(SEQUEL_SUFFIXES).gather(rng.integers(0, len(SEQUEL_SUFFIXES), n))
    title = decorate(title, 0.06, title + sequel)
    subtitle = words.gather(rng.integers(0, len(words), n))
    title = decorate(title, 0.08, title + ": " + subtitle)
    year = pl.Series(rng.integers(1900, 2030, n)).cast(pl.String)
    title = decorate(title, 0.03, title + " " + year)
    # Quotes: whole-title quotes (start with `"`), an inner quoted word, an unbalanced inch mark.
    title = decorate(title, 0.01, '"' + title + '"')
    title = decorate(title, 0.01, subtitle + ' "' + title + '"')
    title = decorate(title, 0.005, pl.Series(rng.integers(7, 13, n)).cast(pl.String) + '" ' + title)
    # Remakes: 2% reuse the title of another row.
    remake = title.gather(pl.Series(rng.integers(0, n, n)))
    return decorate(title, 0.02, remake)


def _rating(
    rng: np.random.Generator,
    *,
    year: FloatArray,
    runtime: FloatArray,
    hot: BoolArray,
    types: npt.NDArray[np.str_],
    adult: BoolArray,
    sequel: BoolArray,
    foreign: BoolArray,
) -> FloatArray:
    """The ground truth: additive effects, interactions and noise, rounded like IMDb."""
    n = len(year)
    effects = np.array([GENRE_TABLE[g][1] for g in GENRES])
    count = hot.sum(axis=1)
    score = 6.1 + (hot @ effects) / np.sqrt(np.maximum(count, 1)) - 0.3 * (count == 0)
    has_year = ~np.isnan(year)
    y = np.where(has_year, year, 1990.0)
    score += np.where(
        has_year, 0.45 * np.tanh((1978 - y) / 18) + 0.25 * np.exp(-(((y - 2012) / 6) ** 2)), -0.1
    )
    has_runtime = ~np.isnan(runtime)
    r = np.where(has_runtime, runtime, 90.0)
    runtime_effect = 0.55 * np.tanh((r - 88) / 22) - 0.35 * np.clip((r - 170) / 60, 0, 2)
    score += np.where(has_runtime, runtime_effect, -0.25)
    genre = {g: hot[:, i] for i, g in enumerate(GENRES)}
    score -= 0.6 * (genre["Horror"] & has_year & (y > 2000))
    score += 0.5 * (genre["Documentary"] & has_runtime & (r > 100))
    score += 0.6 * (genre["Animation"] & has_year & (y < 1975))
    score -= 0.5 * (genre["Comedy"] & has_runtime & (r > 130))
    score += 0.4 * (genre["Drama"] & has_runtime & (r > 150))
    score += sum(effect * (types == name) for name, effect in TYPE_EFFECT.items())
    score += -0.4 * sequel - 0.7 * adult + 0.25 * foreign
    noise = rng.normal(0.0, 0.7, n)
    outlier = rng.random(n) < 0.02
    score = np.where(outlier, rng.uniform(1.0, 10.0, n), score + noise)
    rating: FloatArray = np.clip(np.round(score, 1), 1.0, 10.0)
    return rating


def _basics_frame(
    rng: np.random.Generator, ids: IntArray, types: npt.NDArray[np.str_]
) -> tuple[pl.DataFrame, FloatArray, FloatArray, BoolArray, BoolArray, BoolArray, BoolArray]:
    n = len(ids)
    is_movie = types == "movie"
    year = (1894 + np.floor(132 * rng.beta(3.5, 1.3, n))).astype(np.float64)
    year[rng.random(n) < np.where(is_movie, 0.025, 0.08)] = np.nan
    runtime = np.where(
        is_movie,
        np.clip(rng.normal(98, 22, n), 40, 300),
        np.where(types == "short", rng.uniform(2, 40, n), np.clip(rng.normal(40, 18, n), 3, 200)),
    )
    long_films = is_movie & (rng.random(n) < 0.02)
    runtime = np.round(np.where(long_films, rng.uniform(180, 420, n), runtime))
    runtime[rng.random(n) < np.where(is_movie, 0.12, 0.4)] = np.nan
    adult = rng.random(n) < 0.015
    hot = _genres(rng, n)
    hot[:, GENRES.index("Adult")] |= adult & (rng.random(n) < 0.7)
    no_genres = rng.random(n) < 0.06
    hot[no_genres] = False
    title = _titles(rng, n)
    foreign = rng.random(n) < 0.15
    original = pl.select(
        pl.when(pl.Series(foreign)).then(_titles(rng, n)).otherwise(title)
    ).to_series()
    series_like = np.isin(types, ["tvSeries", "tvMiniSeries"])
    end_year = np.where(
        series_like & ~np.isnan(year) & (rng.random(n) < 0.5),
        year + rng.integers(0, 10, n),
        np.nan,
    )
    genre_str = pl.concat_str(
        [pl.when(pl.lit(pl.Series(hot[:, i]))).then(pl.lit(g)) for i, g in enumerate(GENRES)],
        separator=",",
        ignore_nulls=True,
    )
    frame = pl.DataFrame(
        {
            "tconst": pl.Series(ids).cast(pl.String).str.zfill(7),
            "titleType": pl.Series(list(np.unique(types))).gather(
                np.searchsorted(np.unique(types), types)
            ),
            "primaryTitle": title,
            "originalTitle": original,
            "isAdult": adult.astype(np.int8),
            "startYear": pl.Series(year, nan_to_null=True).cast(pl.Int64),
            "endYear": pl.Series(end_year, nan_to_null=True).cast(pl.Int64),
            "runtimeMinutes": pl.Series(runtime, nan_to_null=True).cast(pl.Int64),
        }
    ).with_columns(
        tconst="tt" + pl.col("tconst"),
        genres=pl.select(genre_str).to_series().replace("", None),
    )
    sequel = frame.select(
        pl.col("primaryTitle").str.contains(
            r"(?:^|\s)(?:[2-9]|1[0-9]|II|III|IV|V|VI|VII|VIII|IX|X|XI|XII)(?:$|[\s:,.!?)])"
            r"|\b(?:Part|Chapter|Volume|Vol\.)\s+\S"
        )
    ).to_series()
    return frame, year, runtime.astype(np.float64), hot, adult, sequel.to_numpy(), foreign


def _malformed(
    rng: np.random.Generator, count: int, next_id: int, movies: pl.DataFrame
) -> tuple[list[bytes], list[bytes]]:
    """Deliberately broken lines for both files, one kind after another."""
    basics: list[bytes] = []
    ratings: list[bytes] = []
    per_kind = max(1, math.ceil(count / 11))

    def line(*fields: str) -> bytes:
        return "\t".join(fields).encode("utf-8") + b"\n"

    def movie(tconst: str, **override: str) -> bytes:
        fields = {
            "tconst": tconst,
            "titleType": "movie",
            "primaryTitle": "Broken Film",
            "originalTitle": "Broken Film",
            "isAdult": "0",
            "startYear": "1999",
            "endYear": NULL,
            "runtimeMinutes": "95",
            "genres": "Drama",
        }
        fields.update(override)
        return line(*(fields[c] for c in BASICS_COLUMNS))

    for _ in range(per_kind):
        ids = [f"tt{next_id + k:07d}" for k in range(11)]
        next_id += 11
        basics += [
            line(ids[0], "movie", "Short Row", "Short Row", "0", "1999"),
            movie(ids[1]).rstrip(b"\n") + b"\textra\n",
            movie(ids[2], startYear="19x9"),
            movie(ids[3], startYear="1066"),
            movie(ids[4], runtimeMinutes="90min"),
            movie(ids[5], runtimeMinutes="99999"),
            movie(ids[6]).replace(b"Broken Film\t0", b"Caf\xe9 Noir\t0"),  # Latin-1, not UTF-8
            movie(ids[7], genres="Drama,Cyberpunk"),
            movie(ids[8], isAdult="2019"),
            movie(ids[9], primaryTitle=NULL),
        ]
        if movies.height:
            dup = movies.row(int(rng.integers(0, movies.height)), named=True)["tconst"]
            basics.append(movie(dup, primaryTitle="Duplicate Of Another Title"))
        ratings += [line(tconst, "6.5", "120") for tconst in ids[1:10]]
        ratings += [
            line(ids[10], "7.0"),
            line(ids[0], "seven", "10"),
            line(f"tt{next_id:07d}", "11.5", "10"),
            line(f"tt{next_id + 1:07d}", NULL, "10"),
            line(f"tt{next_id + 2:07d}", "7.1", "many"),
            line(f"tt{next_id + 3:07d}", "7.1", "42"),  # a rating for a title that does not exist
        ]
        next_id += 4
        if movies.height:
            dup = movies.row(int(rng.integers(0, movies.height)), named=True)["tconst"]
            ratings.append(line(dup, "1.0", "3"))
    return basics, ratings


def _write(path: Path, header: tuple[str, ...], body: pl.DataFrame, extra: list[bytes]) -> None:
    text = body.write_csv(
        separator="\t", quote_style="never", null_value=NULL, include_header=False
    )
    payload = ("\t".join(header) + "\n" + text).encode("utf-8") + b"".join(extra)
    if path.suffix == ".gz":
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle,
        ):
            handle.write(payload)
    else:
        path.write_bytes(payload)


def generate(
    out: Path,
    rows: int = 20_000,
    seed: int = 42,
    *,
    gzipped: bool = True,
    unrated_ratio: float = 1.0,
    bad_share: float = 0.002,
) -> GeneratedData:
    """Write both files into `out` (created if needed) and describe what was written."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if unrated_ratio < 0 or not 0 <= bad_share < 1:
        raise ValueError("unrated_ratio must be >= 0 and bad_share in [0, 1)")
    rng = np.random.default_rng(seed)
    unrated = round(rows * unrated_ratio)
    total = rows + unrated
    ids = np.cumsum(rng.integers(1, 8, total))
    rated = np.zeros(total, dtype=bool)
    rated[rng.choice(total, size=rows, replace=False)] = True
    types = np.where(rated, _choice(rng, RATED_TYPES, total), _choice(rng, UNRATED_TYPES, total))
    basics, year, runtime, hot, adult, sequel, foreign = _basics_frame(rng, ids, types)
    rating = _rating(
        rng,
        year=year,
        runtime=runtime,
        hot=hot,
        types=types,
        adult=adult,
        sequel=sequel,
        foreign=foreign,
    )
    log_votes = rng.normal(3.5 + 0.35 * (rating - 6) + 0.5 * (types == "movie"), 1.6)
    votes = (np.exp(np.clip(log_votes, 0, 15)) + 5).astype(np.int64)
    ratings = pl.DataFrame(
        {
            "tconst": basics["tconst"],
            "averageRating": rating,
            "numVotes": votes,
        }
    ).filter(pl.Series(rated))

    bad_count = math.ceil(rows * bad_share) if bad_share > 0 else 0
    bad_basics: list[bytes] = []
    bad_ratings: list[bytes] = []
    if bad_count:
        movies = basics.filter(pl.Series(rated & (types == "movie")))
        bad_basics, bad_ratings = _malformed(rng, bad_count, int(ids[-1]) + 1, movies)

    out.mkdir(parents=True, exist_ok=True)
    suffix = ".tsv.gz" if gzipped else ".tsv"
    basics_path = out / f"{BASICS}{suffix}"
    ratings_path = out / f"{RATINGS}{suffix}"
    for stale in (out / f"{BASICS}.tsv.gz", out / f"{BASICS}.tsv", out / f"{RATINGS}.tsv.gz"):
        stale.unlink(missing_ok=True)
    (out / f"{RATINGS}.tsv").unlink(missing_ok=True)
    _write(basics_path, BASICS_COLUMNS, basics, bad_basics)
    _write(
        ratings_path,
        RATINGS_COLUMNS,
        ratings.with_columns(pl.col("averageRating").round(1).cast(pl.String)),
        bad_ratings,
    )
    return GeneratedData(
        basics_path=basics_path,
        ratings_path=ratings_path,
        basics_rows=basics.height + len(bad_basics),
        ratings_rows=ratings.height + len(bad_ratings),
        malformed_basics_rows=len(bad_basics),
        malformed_ratings_rows=len(bad_ratings),
    )


def read_back(path: Path) -> bytes:
    """The decompressed bytes of a generated file (tests and debugging)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data
