"""Ingest on hand-written rows: every format quirk, in gzip and plain files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from imdb_trainer.formats import DataError
from imdb_trainer.ingest import ingest
from imdb_trainer.train import check_quality

HEADER_BASICS = (
    b"tconst\ttitleType\tprimaryTitle\toriginalTitle\tisAdult\tstartYear\tendYear\t"
    b"runtimeMinutes\tgenres\n"
)
HEADER_RATINGS = b"tconst\taverageRating\tnumVotes\n"


def row(*fields: bytes) -> bytes:
    return b"\t".join(fields) + b"\n"


BASICS = b"".join(
    [
        HEADER_BASICS,
        row(
            b"tt0000001",
            b"movie",
            b"The Kid",
            b"The Kid",
            b"0",
            b"1921",
            b"\\N",
            b"68",
            b"Comedy,Drama",
        ),
        # \N in every nullable column: kept, with missing values.
        row(b"tt0000002", b"movie", b"Nulls", b"\\N", b"\\N", b"\\N", b"\\N", b"\\N", b"\\N"),
        # Titles with quotes, which break CSV readers that honour quoting.
        row(
            b"tt0000003",
            b"movie",
            b'"Weird Al" Yankovic',
            b'"Weird Al"',
            b"0",
            b"1999",
            b"\\N",
            b"90",
            b"Music",
        ),
        row(
            b"tt0000004",
            b"movie",
            b'12" Single',
            b'12" Single',
            b"0",
            b"2001",
            b"\\N",
            b"45",
            b"Drama",
        ),
        # An empty genres field means no genres.
        row(b"tt0000005", b"movie", b"No Genres", b"No Genres", b"0", b"2005", b"\\N", b"100", b""),
        row(
            b"tt0000006", b"movie", b"Bad Year", b"Bad Year", b"0", b"19x9", b"\\N", b"90", b"Drama"
        ),
        row(b"tt0000007", b"movie", b"Old", b"Old", b"0", b"1066", b"\\N", b"90", b"Drama"),
        row(
            b"tt0000008",
            b"movie",
            b"Runtime",
            b"Runtime",
            b"0",
            b"1999",
            b"\\N",
            b"90min",
            b"Drama",
        ),
        row(b"tt0000009", b"movie", b"Long", b"Long", b"0", b"1999", b"\\N", b"99999", b"Drama"),
        row(b"tt0000010", b"movie", b"Short Row", b"Short Row", b"0", b"1999"),
        row(
            b"tt0000011",
            b"movie",
            b"Long Row",
            b"Long Row",
            b"0",
            b"1999",
            b"\\N",
            b"90",
            b"Drama",
            b"x",
        ),
        row(b"tt0000012", b"movie", b"Caf\xe9", b"Caf\xe9", b"0", b"1999", b"\\N", b"90", b"Drama"),
        row(
            b"tt0000001",
            b"movie",
            b"Duplicate",
            b"Duplicate",
            b"0",
            b"1999",
            b"\\N",
            b"90",
            b"Drama",
        ),
        row(
            b"tt0000013",
            b"movie",
            b"Genre",
            b"Genre",
            b"0",
            b"1999",
            b"\\N",
            b"90",
            b"Drama,Cyberpunk",
        ),
        row(b"tt0000014", b"movie", b"Adult", b"Adult", b"2019", b"1999", b"\\N", b"90", b"Drama"),
        row(b"tt0000015", b"movie", b"\\N", b"Original", b"0", b"1999", b"\\N", b"90", b"Drama"),
        row(b"tt0000016", b"movie", b"", b"Original", b"0", b"1999", b"\\N", b"90", b"Drama"),
        row(b"xx0000017", b"movie", b"Bad Id", b"Bad Id", b"0", b"1999", b"\\N", b"90", b"Drama"),
        row(
            b"tt0000018",
            b"tvEpisode",
            b"Episode",
            b"Episode",
            b"0",
            b"1999",
            b"\\N",
            b"30",
            b"Drama",
        ),
        row(b"tt0000019", b"movie", b"Unrated", b"Unrated", b"0", b"1999", b"\\N", b"90", b"Drama"),
        b"\n",  # a blank line
        row(b"tt0000020", b"movie", b"Unit\x1fSep", b"x", b"0", b"1999", b"\\N", b"90", b"Drama"),
        # The last line has no newline.
        row(b"tt0000021", b"movie", b"Last", b"Last", b"1", b"2020", b"\\N", b"1", b"Adult").rstrip(
            b"\n"
        ),
    ]
)
RATINGS = b"".join(
    [
        HEADER_RATINGS,
        *(row(b"tt%07d" % i, b"6.5", b"100") for i in range(1, 22)),
        row(b"tt0000001", b"9.9", b"5"),  # duplicate
        row(b"tt0000030", b"seven", b"10"),
        row(b"tt0000031", b"11.5", b"10"),
        row(b"tt0000032", b"\\N", b"10"),
        row(b"tt0000033", b"7.0", b"many"),
        row(b"tt0000034", b"7.0"),
        row(b"tt0000035", b"7.0", b"10"),  # a rating for a title that does not exist
    ]
).replace(b"tt0000019\t6.5\t100\n", b"")

EXPECTED_BASICS_BAD = {
    "bad_is_adult": 1,
    "bad_tconst": 1,
    "bad_utf8": 2,
    "duplicate_tconst": 1,
    "missing_title": 2,
    "non_numeric_runtime": 1,
    "non_numeric_start_year": 1,
    "runtime_out_of_range": 1,
    "start_year_out_of_range": 1,
    "unknown_genre": 1,
    "wrong_field_count": 3,
}
EXPECTED_RATINGS_BAD = {
    "bad_num_votes": 1,
    "duplicate_tconst": 1,
    "missing_rating": 1,
    "non_numeric_rating": 1,
    "rating_out_of_range": 1,
    "wrong_field_count": 1,
}


def write(directory: Path, gz: bool, basics: bytes = BASICS, ratings: bytes = RATINGS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".tsv.gz" if gz else ".tsv"
    for name, data in (("title.basics", basics), ("title.ratings", ratings)):
        (directory / f"{name}{suffix}").write_bytes(gzip.compress(data) if gz else data)
    return directory


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_every_quirk_is_accounted_for(tmp_path: Path, gz: bool) -> None:
    result = ingest(write(tmp_path, gz))
    quality = result.quality
    assert quality.basics.bad == EXPECTED_BASICS_BAD
    assert quality.ratings.bad == EXPECTED_RATINGS_BAD
    assert quality.basics.rows == BASICS.count(b"\n")  # header excluded, unterminated last line in
    assert quality.ratings.rows == RATINGS.count(b"\n") - 1
    assert quality.basics.info == {"other_title_types": 1, "unrated": 1}
    frame = result.frame
    assert frame["tconst"].to_list() == [
        "tt0000001",
        "tt0000002",
        "tt0000003",
        "tt0000004",
        "tt0000005",
        "tt0000021",
    ]
    # Nothing silently dropped: every row is kept, bad, another type, unrated or unjoined.
    assert (
        frame.height + quality.basics.bad_rows + sum(quality.basics.info.values())
        == quality.basics.rows
    )
    assert (
        frame.height + quality.ratings.bad_rows + quality.ratings.info["not_a_kept_title"]
        == quality.ratings.rows
    )
    by_id = {r["tconst"]: r for r in frame.to_dicts()}
    assert by_id["tt0000001"]["primaryTitle"] == "The Kid"  # the first of two duplicates wins
    assert by_id["tt0000001"]["averageRating"] == 6.5
    nulls = by_id["tt0000002"]
    assert [
        nulls[k] for k in ("originalTitle", "isAdult", "startYear", "runtimeMinutes", "genres")
    ] == [None] * 5
    assert by_id["tt0000003"]["primaryTitle"] == '"Weird Al" Yankovic'
    assert by_id["tt0000004"]["primaryTitle"] == '12" Single'
    assert by_id["tt0000005"]["genres"] is None
    assert by_id["tt0000021"]["isAdult"] == 1
    assert by_id["tt0000021"]["runtimeMinutes"] == 1
    assert quality.examined_rows == quality.basics.rows - 1 + quality.ratings.rows
    assert quality.bad_share == pytest.approx(quality.bad_rows / quality.examined_rows)
    assert len(quality.fingerprint) == 64
    assert quality.to_dict()["files"]["title.basics"]["bad_rows"] == 15
    assert set(quality.bad_by_reason()) >= {"basics:bad_utf8", "ratings:missing_rating"}


def test_fingerprint_ignores_compression(tmp_path: Path) -> None:
    gz = ingest(write(tmp_path / "gz", True)).quality.fingerprint
    plain = ingest(write(tmp_path / "plain", False)).quality.fingerprint
    assert gz == plain


def test_several_title_types(tmp_path: Path) -> None:
    result = ingest(write(tmp_path, False), title_types=("movie", "tvEpisode"))
    assert "tt0000018" in result.frame["tconst"].to_list()
    assert result.quality.basics.info["other_title_types"] == 0


def test_gzip_is_preferred_and_detected_by_content(tmp_path: Path) -> None:
    write(tmp_path, False)
    # A .tsv.gz that holds plain text is still read (gzip is detected by its magic bytes).
    (tmp_path / "title.basics.tsv.gz").write_bytes(BASICS)
    assert ingest(tmp_path).quality.basics.path.endswith(".tsv.gz")


def test_progress_callback(tmp_path: Path) -> None:
    seen: dict[str, list[int]] = {}

    def progress(label: str, total: int):  # type: ignore[no-untyped-def]
        seen[label] = [total]
        return seen[label].append

    ingest(write(tmp_path, True), progress=progress)
    assert set(seen) == {"title.basics", "title.ratings"}
    assert all(values[-1] == values[0] for values in seen.values())  # read to the end


def test_bad_share_gate(tmp_path: Path) -> None:
    quality = ingest(write(tmp_path, True)).quality
    check_quality(quality, max_bad_share=0.5)
    with pytest.raises(DataError, match=r"bad \(.*> --max-bad-share 1.00%\); most frequent: "):
        check_quality(quality, max_bad_share=0.01)


def test_nothing_usable(tmp_path: Path) -> None:
    quality = ingest(write(tmp_path, True, BASICS, HEADER_RATINGS)).quality
    with pytest.raises(DataError, match="no usable rated titles"):
        check_quality(quality, max_bad_share=1.0)


@pytest.mark.parametrize(
    ("basics", "message"),
    [
        (b"", "the file is empty"),
        (b"tconst\ttitleType\n", "unexpected header"),
        (BASICS.replace(b"\tgenres\n", b"\tgenre\n", 1), "unexpected header"),
    ],
)
def test_bad_files(tmp_path: Path, basics: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ingest(write(tmp_path, False, basics=basics))


def test_header_only_is_empty_not_an_error(tmp_path: Path) -> None:
    result = ingest(write(tmp_path, False, basics=HEADER_BASICS))
    assert result.frame.height == 0
    assert result.quality.basics.rows == 0


def test_corrupt_gzip(tmp_path: Path) -> None:
    write(tmp_path, True)
    data = gzip.compress(BASICS * 50)
    (tmp_path / "title.basics.tsv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the file"):
        ingest(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"neither title\.basics\.tsv\.gz nor title\.basics\.tsv"):
        ingest(tmp_path)
