"""OSV records: loading, validation, and PyPI version matching (imdb_deploy.supply_chain)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from imdb_deploy.supply_chain import osv_database
from imdb_deploy.supply_chain.osv_database import (
    DatabaseError,
    Event,
    in_range,
    load_database,
    rfc3339,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def advisory_db_dir() -> Path:
    """The PyPA advisory snapshot: $OSV_OFFLINE_DIR, else shared/ beside the repository."""
    configured = os.environ.get("OSV_OFFLINE_DIR")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "data" / "pypa-advisory-db" / "vulns"


def record(
    vuln_id: str = "TEST-1",
    name: str = "demo",
    events: list[dict[str, str]] | None = None,
    versions: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"name": name, "ecosystem": "PyPI"}}
    if events is not None:
        affected["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    if versions is not None:
        affected["versions"] = versions
    return {"id": vuln_id, "modified": "2024-01-01T00:00:00Z", "affected": [affected], **extra}


def write(directory: Path, relative: str, content: object) -> Path:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(content), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def ev(kind: str, version: str) -> Event:
    special = (kind, version) in {("introduced", "0"), ("limit", "*")}
    return Event(kind, None if special else Version(version))


def ids(found: list[dict[str, Any]]) -> list[str]:
    return [vuln["id"] for vuln in found]


# ---------------------------------------------------------------- range evaluation


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.1", True), ("1.4.9", True), ("1.5", False), ("2.0", False), ("3.0", True), ("3.1", False)],
)
def test_introduced_fixed_intervals(version: str, expected: bool) -> None:
    events = [
        ev("introduced", "3.0"),
        ev("fixed", "3.1"),
        ev("introduced", "0"),
        ev("fixed", "1.5"),
    ]
    assert in_range(Version(version), events) is expected


@pytest.mark.parametrize(
    ("version", "expected"), [("0.9", False), ("1.0", True), ("2.1.214", True), ("2.1.215", False)]
)
def test_last_affected_is_inclusive(version: str, expected: bool) -> None:
    events = [ev("introduced", "1.0"), ev("last_affected", "2.1.214")]
    assert in_range(Version(version), events) is expected


@pytest.mark.parametrize(
    ("version", "expected"), [("1.0", True), ("1.9", True), ("2.0", False), ("5.0", False)]
)
def test_limit_bounds_an_open_range(version: str, expected: bool) -> None:
    assert in_range(Version(version), [ev("introduced", "1.0"), ev("limit", "2.0")]) is expected


def test_star_limit_is_infinity_and_zero_is_the_beginning() -> None:
    events = [ev("introduced", "0"), ev("limit", "*")]
    assert in_range(Version("0.0.0.dev0"), events)
    assert in_range(Version("99!1.0"), events)


def test_pre_releases_of_the_fix_are_still_affected() -> None:
    events = [ev("introduced", "0"), ev("fixed", "2.0")]
    assert in_range(Version("2.0rc1"), events)
    assert not in_range(Version("2.0.post1"), events)


# ---------------------------------------------------------------- loading and matching


def test_matching_by_range_list_and_normalised_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "demo/RANGE.json",
        record("RANGE", "Demo_Pkg", [{"introduced": "1.0"}, {"fixed": "1.2"}]),
    )
    write(tmp_path, "demo/LIST.yaml", record("LIST", "demo.pkg", versions=["2.0-rc1", "weird-1"]))
    database = load_database(tmp_path)
    assert ids(database.query("DEMO-pkg", "1.1")) == ["RANGE"]
    assert ids(database.query("demo_pkg", "1.2")) == []
    assert ids(database.query("demo-pkg", "2.0rc1")) == ["LIST"]  # PEP 440 equality
    assert ids(database.query("demo-pkg", "weird-1")) == ["LIST"]  # invalid: exact string only
    assert ids(database.query("demo-pkg", "not a version")) == []
    assert sorted(ids(database.query("demo-pkg"))) == ["LIST", "RANGE"]
    assert database.query("other", "1.1") == []
    served = database.get("RANGE")
    assert served is not None
    assert served["affected"][0]["package"]["name"] == "demo-pkg"  # what pip-audit compares


def test_withdrawn_records_are_not_matched_but_still_served_by_id(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", record("LIVE", events=[{"introduced": "0"}]))
    write(
        tmp_path,
        "b.yaml",
        record("GONE", events=[{"introduced": "0"}], withdrawn="2024-02-02T00:00:00Z"),
    )
    write(tmp_path, "c.yaml", {"id": "GONE-NO-AFFECTED", "withdrawn": "2024-02-02T00:00:00Z"})
    database = load_database(tmp_path)
    assert ids(database.query("demo", "1.0")) == ["LIVE"]
    assert database.withdrawn == 2
    assert database.get("GONE") is not None
    assert database.get("NOPE") is None
    assert "3 OSV records" in database.summary()


def test_other_ecosystems_and_git_ranges_are_validated_but_not_matched(tmp_path: Path) -> None:
    data = record("MIXED", events=[{"introduced": "0"}, {"fixed": "2.0"}])
    data["affected"].append(
        {"package": {"name": "demo", "ecosystem": "npm"}, "versions": ["1.0"], "ranges": []}
    )
    data["affected"][0]["ranges"].append(
        {"type": "GIT", "repo": "https://example.invalid/r", "events": [{"introduced": "abc"}]}
    )
    write(tmp_path, "m.json", data)
    database = load_database(tmp_path)
    assert ids(database.query("demo", "1.0")) == ["MIXED"]
    assert ids(database.query("demo", "2.0")) == []
    assert list(database.by_package) == ["demo"]


def test_invalid_range_versions_are_dropped_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "x.yaml", record("X", events=[{"introduced": "0"}, {"fixed": "2019-09-12"}]))
    database = load_database(tmp_path)
    assert len(database.warnings) == 1
    assert "invalid version '2019-09-12'" in str(database.warnings[0])
    # The fix cannot be compared, so the range stays open: a false positive, never a miss.
    assert ids(database.query("demo", "5.0")) == ["X"]
    served = database.get("X")
    assert served is not None
    assert served["affected"][0]["ranges"][0]["events"] == [{"introduced": "0"}]


def test_timestamps_are_served_in_the_forms_pip_audit_parses(tmp_path: Path) -> None:
    write(
        tmp_path,
        "t.yaml",
        "id: T\nmodified: 2021-11-22T04:57:52.862665Z\npublished: 2019-04-07 00:29:00\n"
        "affected:\n- package: {name: demo, ecosystem: PyPI}\n  versions: ['1.0']\n"
        "database_specific: {day: 2020-01-02}\n",
    )
    write(
        tmp_path,
        "u.json",
        record("U", versions=["1.0"], published="2020-01-01T02:00:00.5+02:00", modified="bad"),
    )
    write(tmp_path, "v.json", record("V", versions=["1.0"], published="yesterday"))
    database = load_database(tmp_path)
    t, u, v = (database.get(name) for name in ("T", "U", "V"))
    assert t is not None
    assert u is not None
    assert v is not None
    assert t["modified"] == "2021-11-22T04:57:52.862665Z"
    assert t["published"] == "2019-04-07T00:29:00Z"
    assert t["database_specific"] == {"day": "2020-01-02"}
    assert u["published"] == "2020-01-01T00:00:00.500000Z"
    assert u["modified"] == "bad"  # kept: pip-audit never parses it
    assert "published" not in v  # dropped: pip-audit would crash on it
    assert sorted(problem.message.split(":")[0] for problem in database.warnings) == [
        "U.modified",
        "V.published",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59Z"),
        ("2024-01-01T00:00:00.123456789Z", "2024-01-01T00:00:00.123456Z"),
        ("2024-01-01t01:00:00-01:30", "2024-01-01T02:30:00Z"),
    ],
)
def test_rfc3339(text: str, expected: str) -> None:
    assert rfc3339(text, "x") == expected


@pytest.mark.parametrize(
    "text", ["2023-02-29T00:00:00Z", "2024-01-01T00:00:00", "1-01-01T00:00:00Z", 7]
)
def test_rfc3339_rejects(text: object) -> None:
    with pytest.raises(osv_database.MalformedRecordError):
        rfc3339(text, "x")


MALFORMED: dict[str, object] = {
    "yaml.yaml": "id: [unclosed\n",
    "json.json": "{not json",
    "list.yaml": "- 1\n- 2\n",
    "noid.json": {"affected": []},
    "aliases.json": record("A1", versions=["1"], aliases="CVE-1"),
    "summary.json": record("A2", versions=["1"], summary=["x"]),
    "schema.json": record("A3", versions=["1"], schema_version="one"),
    "noaffected.json": {"id": "A4"},
    "emptyaffected.json": {"id": "A5", "affected": []},
    "entry.json": {"id": "A6", "affected": ["demo"]},
    "package.json": {"id": "A7", "affected": [{"versions": ["1"]}]},
    "ecosystem.json": {"id": "A8", "affected": [{"package": {"name": "demo"}}]},
    "purl.json": {
        "id": "A9",
        "affected": [{"package": {"name": "d", "ecosystem": "PyPI", "purl": 1}}],
    },
    "float.yaml": (
        "id: A10\naffected:\n- package: {name: demo, ecosystem: PyPI}\n  versions: [2.10]\n"
    ),
    "ranges.json": {
        "id": "A11",
        "affected": [{"package": {"name": "d", "ecosystem": "PyPI"}, "ranges": {}}],
    },
    "range.json": record("A12", versions=["1"])
    | {"affected": [{"package": {"name": "d", "ecosystem": "PyPI"}, "ranges": ["x"]}]},
    "noevents.json": record("A13", events=[]),
    "twokeys.json": record("A14", events=[{"introduced": "0", "fixed": "1"}]),
    "badkey.json": record("A15", events=[{"introduced": "0"}, {"broken": "1"}]),
    "badvalue.json": {
        "id": "A16",
        "affected": [
            {
                "package": {"name": "d", "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": 0}]}],
            }
        ],
    },
    "keys.yaml": "id: A17\n1: x\naffected: []\n",
    "binary.yaml": "id: A18\ndata: !!binary aGVsbG8=\naffected: []\n",
    "latin1.json": "",
    "duplicate.json": record("GOOD", versions=["1"]),
}


def test_malformed_files_are_counted_and_never_crash(tmp_path: Path) -> None:
    write(tmp_path, "a-good/GOOD.json", record("GOOD", versions=["1.0"]))  # read first
    for name, content in MALFORMED.items():
        write(tmp_path, f"bad/{name}", content)
    (tmp_path / "bad" / "latin1.json").write_bytes(b'{"id": "\xe9"}')
    write(tmp_path, "bad/set.yaml", "id: A19\ns: !!set {a}\naffected: []\n")
    database = load_database(tmp_path)
    assert list(database.records) == ["GOOD"]
    bad = {problem.path.name: problem.message for problem in database.malformed}
    assert sorted(bad) == sorted([*MALFORMED, "set.yaml"])
    assert "duplicate id GOOD" in bad["duplicate.json"]
    assert "invalid YAML" in bad["yaml.yaml"]
    assert "invalid JSON" in bad["json.json"]
    assert "versions must be a list of strings" in bad["float.yaml"]  # YAML read 2.10 as 2.1
    assert "unreadable" in bad["latin1.json"]
    assert "unsupported value of type bytes" in bad["binary.yaml"]


def test_loading_skips_hidden_and_non_record_files(tmp_path: Path) -> None:
    write(tmp_path, "demo/R.yml", record("R", versions=["1"]))
    write(tmp_path, ".git/objects/X.json", "{broken")
    write(tmp_path, ".id-allocator", "abc")
    write(tmp_path, "README.md", "# notes")
    (tmp_path / "folder.json").mkdir()
    database = load_database(tmp_path)
    assert list(database.records) == ["R"]
    assert database.malformed == []


def test_an_empty_or_missing_database_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="not found"):
        load_database(tmp_path / "missing")
    with pytest.raises(DatabaseError, match="0 record files"):
        load_database(tmp_path)
    write(tmp_path, "a/broken.json", "[")
    with pytest.raises(DatabaseError, match=r"1 malformed\n.*broken.json"):
        load_database(tmp_path)


def test_pure_python_yaml_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "R.yaml", record("R", versions=["1.0"]))
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    assert ids(load_database(tmp_path).query("demo", "1.0")) == ["R"]


# ---------------------------------------------------------------- the real advisory database
# The PyPA snapshot (2,662 records, seconds to load) is a real part: these run in integration.


@pytest.fixture(scope="module")
def advisory_db(require: Callable[[bool, str], None]) -> osv_database.OsvDatabase:
    directory = advisory_db_dir()
    require(directory.is_dir(), f"the PyPA advisory database snapshot at {directory}")
    return load_database(directory)


@pytest.mark.integration
def test_real_database_loads_cleanly(advisory_db: osv_database.OsvDatabase) -> None:
    assert len(advisory_db.records) > 2000
    assert advisory_db.malformed == []


@pytest.mark.integration
def test_real_database_jinja2(advisory_db: osv_database.OsvDatabase) -> None:
    assert "PYSEC-2019-217" in ids(advisory_db.query("Jinja2", "2.10"))
    assert "PYSEC-2019-217" not in ids(advisory_db.query("jinja2", "2.10.1"))


@pytest.mark.integration
def test_real_database_skips_withdrawn(advisory_db: osv_database.OsvDatabase) -> None:
    withdrawn = advisory_db.get("PYSEC-2023-73")  # redis, withdrawn, "introduced: 0"
    assert withdrawn is not None
    assert "withdrawn" in withdrawn
    assert "PYSEC-2023-73" not in ids(advisory_db.query("redis", "4.5.0"))
