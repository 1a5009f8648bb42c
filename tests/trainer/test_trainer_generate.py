"""The generator: exact public format, determinism, the quirks it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_trainer.formats import BASICS_COLUMNS, RATINGS_COLUMNS
from imdb_trainer.generate import generate, read_back


def test_format_and_quirks(tmp_path: Path) -> None:
    result = generate(tmp_path, rows=3000, seed=3)
    assert result.basics_path.name == "title.basics.tsv.gz"
    basics = read_back(result.basics_path).split(b"\n")
    ratings = read_back(result.ratings_path).split(b"\n")
    assert basics[0].decode() == "\t".join(BASICS_COLUMNS)
    assert ratings[0].decode() == "\t".join(RATINGS_COLUMNS)
    assert basics[-1] == ratings[-1] == b""  # every line ends with a newline
    body = basics[1:-1]
    assert len(body) == result.basics_rows
    assert len(ratings) - 2 == result.ratings_rows
    assert result.malformed_basics_rows > 0
    assert result.malformed_ratings_rows > 0
    clean = body[: len(body) - result.malformed_basics_rows]
    assert all(line.count(b"\t") == 8 for line in clean)
    text = b"\n".join(clean).decode("utf-8")
    fields = [line.split("\t") for line in text.split("\n")]
    types = {f[1] for f in fields}
    assert {"movie", "tvEpisode", "short", "tvSeries"} <= types
    titles = [f[2] for f in fields]
    assert any(t.startswith('"') for t in titles)
    assert any('"' in t[1:] for t in titles)
    assert len(set(titles)) < len(titles)  # remakes share titles
    assert any(not t.isascii() for t in titles)
    for column in (5, 7, 8):  # startYear, runtimeMinutes, genres
        assert any(f[column] == "\\N" for f in fields)
    assert any(f[6] != "\\N" for f in fields)  # some series have an endYear
    broken = b"\n".join(body[len(clean) :])
    assert b"\xe9" in broken  # invalid UTF-8 is among the malformed rows


def test_deterministic(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", rows=500, seed=11)
    second = generate(tmp_path / "b", rows=500, seed=11)
    other = generate(tmp_path / "c", rows=500, seed=12)
    assert first.basics_path.read_bytes() == second.basics_path.read_bytes()
    assert first.ratings_path.read_bytes() == second.ratings_path.read_bytes()
    assert first.basics_path.read_bytes() != other.basics_path.read_bytes()


def test_plain_and_clean(tmp_path: Path) -> None:
    generate(tmp_path, rows=200, seed=1)
    result = generate(tmp_path, rows=200, seed=1, gzipped=False, bad_share=0, unrated_ratio=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["title.basics.tsv", "title.ratings.tsv"]
    assert result.malformed_basics_rows == result.malformed_ratings_rows == 0
    assert result.basics_rows == result.ratings_rows == 200
    assert read_back(result.basics_path).startswith(b"tconst\t")


@pytest.mark.parametrize(
    "kwargs", [{"rows": 0}, {"rows": 10, "unrated_ratio": -1}, {"rows": 10, "bad_share": 1.0}]
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate(tmp_path, **kwargs)  # type: ignore[arg-type]
