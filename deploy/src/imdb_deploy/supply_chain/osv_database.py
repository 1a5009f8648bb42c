"""OSV vulnerability records loaded from a directory, validated and indexed for PyPI queries.

The layout is the PyPA advisory database's (`NAME/ID.yaml`), but any tree of `.yaml`, `.yml`
and `.json` OSV records works. Loading never stops at a bad file: each malformed record is
counted with its reason, and a directory with no valid record at all is an error, never an
empty (and so silently "clean") database.

Matching follows the OSV schema's evaluation algorithm for the PyPI ecosystem: PEP 503
normalised names, the `affected[].versions` list, and `ECOSYSTEM` ranges whose `introduced`,
`fixed`, `last_affected` and `limit` events are compared as `packaging` versions.

The records are served the way pip-audit's OSV client needs them (it trusts the server's
matching and reads only a few fields, see `pip_audit/_service/osv.py`):

- PyPI package names are normalised, since pip-audit reads fix versions only from the
  `affected` entry whose name equals the dependency's canonical name;
- timestamps become `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`, the only forms pip-audit parses;
- a `published` timestamp that cannot be parsed is dropped (with a load warning);
- `ECOSYSTEM` events whose version is not a valid PEP 440 version are dropped, with a load
  warning (pip-audit would crash on them); matching ignores them too, so an unparseable `fixed`
  leaves the range open (a false positive, never a silent miss).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PYPI = "PyPI"
RECORD_SUFFIXES = frozenset({".json", ".yaml", ".yml"})
EVENT_KINDS = frozenset({"introduced", "fixed", "last_affected", "limit"})
TIMESTAMP_FIELDS = ("modified", "published", "withdrawn")

JSONObject = dict[str, Any]

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


class DatabaseError(Exception):
    """The directory cannot serve as a vulnerability database."""


class MalformedRecordError(ValueError):
    """A record file is not a usable OSV record."""


@dataclass(frozen=True)
class Problem:
    """A malformed record file, or a warning about a usable one."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Event:
    """One range event; `version=None` is the special "0" (introduced) or "*" (limit)."""

    kind: str
    version: Version | None

    def sort_key(self) -> tuple[int, Version]:
        if self.version is None:
            return (0 if self.kind == "introduced" else 2, _ZERO)
        return (1, self.version)

    def at_or_below(self, version: Version) -> bool:
        """`version >= self`."""
        if self.version is None:
            return self.kind == "introduced"
        return version >= self.version

    def below(self, version: Version) -> bool:
        """`version > self`, for `last_affected` (which has no special value)."""
        return self.version is not None and version > self.version


_ZERO = Version("0")


def in_range(version: Version, events: Sequence[Event]) -> bool:
    """The OSV schema's `IncludedInRanges` for one range (its `BeforeLimits` included)."""
    limits = [event for event in events if event.kind == "limit"]
    if limits and not any(not limit.at_or_below(version) for limit in limits):
        return False
    vulnerable = False
    for event in sorted(events, key=Event.sort_key):
        if event.kind == "introduced" and event.at_or_below(version):
            vulnerable = True
        elif (event.kind == "fixed" and event.at_or_below(version)) or (
            event.kind == "last_affected" and event.below(version)
        ):
            vulnerable = False
    return vulnerable


@dataclass(frozen=True)
class Affected:
    """What one `affected[]` entry says about one PyPI package."""

    versions: frozenset[str]
    parsed_versions: frozenset[Version]
    ranges: tuple[tuple[Event, ...], ...]

    def matches(self, version: str) -> bool:
        """Listed, or inside an ECOSYSTEM range. An invalid version can only match the list."""
        if version in self.versions:
            return True
        try:
            parsed = Version(version)
        except InvalidVersion:
            return False
        return parsed in self.parsed_versions or any(in_range(parsed, r) for r in self.ranges)


@dataclass(frozen=True)
class OsvRecord:
    """A validated record: `data` is what the mirror serves."""

    id: str
    path: Path
    data: JSONObject
    withdrawn: bool
    packages: dict[str, tuple[Affected, ...]]


@dataclass
class OsvDatabase:
    """Valid records by id, the non-withdrawn ones indexed by canonical PyPI name."""

    directory: Path
    records: dict[str, OsvRecord]
    malformed: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    by_package: dict[str, list[OsvRecord]] = field(default_factory=dict)

    @property
    def withdrawn(self) -> int:
        return sum(record.withdrawn for record in self.records.values())

    def query(self, name: str, version: str | None = None) -> list[JSONObject]:
        """Records affecting PyPI package `name` at `version` (every version when None)."""
        key = canonicalize_name(name)
        return [
            record.data
            for record in self.by_package.get(key, [])
            if version is None or any(entry.matches(version) for entry in record.packages[key])
        ]

    def get(self, vuln_id: str) -> JSONObject | None:
        """One record by id, withdrawn ones included (as OSV's `GET /v1/vulns/{id}`)."""
        record = self.records.get(vuln_id)
        return None if record is None else record.data

    def summary(self) -> str:
        return (
            f"{len(self.records)} OSV records from {self.directory} "
            f"({self.withdrawn} withdrawn, {len(self.malformed)} malformed files skipped, "
            f"{len(self.warnings)} warnings)"
        )


def load_database(directory: Path) -> OsvDatabase:
    """Load every record file under `directory` (dot-directories excluded).

    Raises DatabaseError when the directory is missing or holds no valid record.
    """
    if not directory.is_dir():
        raise DatabaseError(f"OSV directory not found: {directory}")
    database = OsvDatabase(directory=directory, records={})
    files = list(_record_files(directory))
    for path in files:
        warnings: list[str] = []
        try:
            record = parse_record(path, read_record_file(path), warnings)
        except MalformedRecordError as error:
            database.malformed.append(Problem(path, str(error)))
            continue
        first = database.records.get(record.id)
        if first is not None:
            database.malformed.append(Problem(path, f"duplicate id {record.id} ({first.path})"))
            continue
        database.warnings.extend(Problem(path, warning) for warning in warnings)
        database.records[record.id] = record
        if not record.withdrawn:
            for name in record.packages:
                database.by_package.setdefault(name, []).append(record)
    if not database.records:
        raise DatabaseError(
            f"no valid OSV record in {directory}: {len(files)} record files, "
            f"{len(database.malformed)} malformed"
            + "".join(f"\n  {problem}" for problem in database.malformed[:10])
        )
    return database


def _record_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(directory).parts)
        if path.suffix.lower() in RECORD_SUFFIXES and not hidden and path.is_file():
            yield path


def read_record_file(path: Path) -> object:
    """The parsed content of one JSON or YAML file (YAML's safe loader)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MalformedRecordError(f"unreadable: {error}") from error
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        if yaml.__with_libyaml__:  # the C parser: about ten times faster on a large database
            return yaml.load(text, Loader=yaml.CSafeLoader)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise MalformedRecordError(f"invalid {kind}: {' '.join(str(error).split())}") from error


def parse_record(path: Path, raw: object, warnings: list[str]) -> OsvRecord:
    """Validate one record and build its served form; problems that are not fatal go to
    `warnings`. Raises MalformedRecordError."""
    data = _jsonable(raw, "record")
    if not isinstance(data, dict):
        raise MalformedRecordError(f"not an OSV record (a {type(raw).__name__})")
    vuln_id = _optional_str(data, "id", "record")
    if not vuln_id:
        raise MalformedRecordError("missing `id`")
    schema_version = _optional_str(data, "schema_version", vuln_id)
    if schema_version is not None:
        _version(schema_version, f"{vuln_id}.schema_version")
    for key in ("summary", "details"):
        _optional_str(data, key, vuln_id)
    _string_list(data, "aliases", vuln_id)
    for key in TIMESTAMP_FIELDS:
        if data.get(key) is None:
            continue
        try:
            data[key] = rfc3339(data[key], f"{vuln_id}.{key}")
        except MalformedRecordError as error:
            # Only `published` is parsed by pip-audit (and would crash it); the others are kept.
            if key == "published":
                del data[key]
            warnings.append(f"{error}; {'dropped' if key == 'published' else 'kept as is'}")
    withdrawn = data.get("withdrawn") is not None
    affected = data.get("affected")
    if affected is None and withdrawn:
        affected = []
    if not isinstance(affected, list) or not (affected or withdrawn):
        raise MalformedRecordError(f"{vuln_id}: `affected` must be a non-empty list")
    packages: dict[str, list[Affected]] = {}
    for index, entry in enumerate(affected):
        where = f"{vuln_id}.affected[{index}]"
        name, compiled = _parse_affected(entry, where, warnings)
        if compiled is not None:
            packages.setdefault(name, []).append(compiled)
    return OsvRecord(
        id=vuln_id,
        path=path,
        data=data,
        withdrawn=withdrawn,
        packages={name: tuple(entries) for name, entries in packages.items()},
    )


def _parse_affected(entry: object, where: str, warnings: list[str]) -> tuple[str, Affected | None]:
    if not isinstance(entry, dict):
        raise MalformedRecordError(f"{where} is not an object")
    package = entry.get("package")
    if not isinstance(package, dict):
        raise MalformedRecordError(f"{where}.package must be an object")
    name = _optional_str(package, "name", f"{where}.package")
    ecosystem = _optional_str(package, "ecosystem", f"{where}.package")
    if not name or not ecosystem:
        raise MalformedRecordError(f"{where}.package needs a `name` and an `ecosystem`")
    _optional_str(package, "purl", f"{where}.package")
    versions = _string_list(entry, "versions", where)
    ranges = entry.get("ranges", [])
    if not isinstance(ranges, list):
        raise MalformedRecordError(f"{where}.ranges must be a list")
    compiled_ranges: list[tuple[Event, ...]] = []
    for index, range_ in enumerate(ranges):
        events = _parse_range(range_, f"{where}.ranges[{index}]", ecosystem == PYPI, warnings)
        if events is not None:
            compiled_ranges.append(events)
    if ecosystem != PYPI:
        return name, None
    package["name"] = canonicalize_name(name)
    parsed: set[Version] = set()
    for version in versions:
        with suppress(InvalidVersion):  # an invalid one is still matched as an exact string
            parsed.add(Version(version))
    affected = Affected(frozenset(versions), frozenset(parsed), tuple(compiled_ranges))
    return package["name"], affected


def _parse_range(
    range_: object, where: str, pypi: bool, warnings: list[str]
) -> tuple[Event, ...] | None:
    """Check one range; for a PyPI ECOSYSTEM range also compile its events (dropping, with a
    warning, those whose version is invalid) and return them."""
    if not isinstance(range_, dict):
        raise MalformedRecordError(f"{where} is not an object")
    range_type = _optional_str(range_, "type", where)
    events = range_.get("events")
    if not range_type or not isinstance(events, list) or not events:
        raise MalformedRecordError(f"{where} needs a `type` and a non-empty `events` list")
    for index, event in enumerate(events):
        if not isinstance(event, dict) or len(event) != 1:
            raise MalformedRecordError(f"{where}.events[{index}] must have exactly one key")
        ((kind, value),) = event.items()
        if kind not in EVENT_KINDS or not isinstance(value, str):
            raise MalformedRecordError(f"{where}.events[{index}]: bad event {event!r}")
    if not pypi or range_type != "ECOSYSTEM":
        return None
    compiled: list[Event] = []
    kept: list[JSONObject] = []
    for event in events:
        ((kind, value),) = event.items()
        if (kind, value) in {("introduced", "0"), ("limit", "*")}:
            compiled.append(Event(kind, None))
        else:
            try:
                compiled.append(Event(kind, Version(value)))
            except InvalidVersion:
                warnings.append(f"{where}: ignored {kind} event with invalid version {value!r}")
                continue
        kept.append(event)
    range_["events"] = kept
    return tuple(compiled)


def rfc3339(value: object, where: str) -> str:
    """A timestamp (RFC 3339 text, or a datetime from YAML) as UTC `...Z`, as pip-audit parses."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    else:
        match = _RFC3339.match(value) if isinstance(value, str) else None
        if match is None:
            raise MalformedRecordError(f"{where}: not an RFC 3339 timestamp: {value!r}")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        if offset in {"Z", "z"}:
            zone = timezone.utc
        else:
            sign = -1 if offset[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        try:
            moment = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), micro, zone
            )
        except ValueError as error:
            raise MalformedRecordError(f"{where}: {error}: {value!r}") from error
    moment = moment.astimezone(timezone.utc)
    layout = "%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return moment.strftime(layout)


def _jsonable(value: object, where: str) -> Any:
    """A deep copy made of JSON types only; YAML timestamps and dates become text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime):
        return rfc3339(value, where)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return [_jsonable(item, where) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise MalformedRecordError(f"{where}: object keys must be strings")
        return {key: _jsonable(item, f"{where}.{key}") for key, item in value.items()}
    raise MalformedRecordError(f"{where}: unsupported value of type {type(value).__name__}")


def _optional_str(data: JSONObject, key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedRecordError(f"{where}.{key} must be a string, not {value!r}")
    return value


def _string_list(data: JSONObject, key: str, where: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MalformedRecordError(f"{where}.{key} must be a list of strings")
    return value


def _version(text: str, where: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as error:
        raise MalformedRecordError(f"{where}: invalid version {text!r}") from error
