"""pip-audit over a locked, hashed requirements file, as a gate that cannot pass by omission.

    python -m imdb_deploy.supply_chain.audit --requirements FILE --report FILE [--osv-dir DIR]

The requirements come from `uv export --locked --no-emit-workspace --format requirements-txt`:
every line pinned with `==` and hashed. pip-audit runs as `sys.executable -m pip_audit` with
`--require-hashes --disable-pip` (no resolution, no install; pip-audit checks that hashes are
present, not that they match).

Modes:
  offline  `--osv-dir DIR` (default: $OSV_OFFLINE_DIR when set and not empty): the OSV records
           in DIR are served on 127.0.0.1 (`osv_mirror`) and pip-audit runs with
           `-s osv --osv-url MIRROR/v1/query`. Its proxies point at a closed loopback port, so
           a request anywhere else fails instead of leaving the machine.
  online   otherwise: pip-audit's default service (PyPI's JSON API).

Every pinned requirement is audited, whatever its environment marker. pip-audit by itself
drops a requirement whose marker is false for the interpreter that runs it (on 3.11, `uv
export`'s `; python_full_version < '3.11'` lines would never be audited) and refuses two
versions of one name in a run. So the file is rewritten without markers, in as many runs
("passes") as it takes for each name to appear once per run, and the reports are merged.

Exit status: 0 when every requirement was audited and none is vulnerable; 1 when a vulnerability
was found, a requirement was skipped or missing from pip-audit's report, or the offline
database has malformed records; 2 when the audit could not run (bad input, missing database,
pip-audit failed). A file that pins nothing (a package without third-party dependencies)
passes, and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pip_requirements_parser import RequirementsFile  # type: ignore[import-untyped]

from imdb_deploy.supply_chain.osv_database import DatabaseError, OsvDatabase, load_database
from imdb_deploy.supply_chain.osv_mirror import QUERY_PATH, running

OSV_DIR_VARIABLE = "OSV_OFFLINE_DIR"
PIP_AUDIT_TIMEOUT_S = 900
# Offline, every proxy points here: a closed port, so a stray request fails at once.
_BLACKHOLE_PROXY = "http://127.0.0.1:9"
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


class AuditError(Exception):
    """The audit could not run: exit status 2."""


@dataclass(frozen=True)
class Pin:
    """One `name==version` requirement line."""

    name: str
    version: Version
    hashes: tuple[str, ...]
    marker: str | None
    line: int

    def requirement(self) -> str:
        return " ".join([f"{self.name}=={self.version}", *(f"--hash={h}" for h in self.hashes)])


@dataclass(frozen=True)
class Vulnerability:
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]


@dataclass
class Outcome:
    """What the merged pip-audit reports say against what the requirements file pins."""

    audited: list[tuple[Pin, list[Vulnerability]]] = field(default_factory=list)
    skipped: list[tuple[Pin, str]] = field(default_factory=list)
    dependencies: list[Any] = field(default_factory=list)
    fixes: list[Any] = field(default_factory=list)

    @property
    def vulnerable(self) -> list[tuple[Pin, list[Vulnerability]]]:
        return [(pin, vulns) for pin, vulns in self.audited if vulns]


def read_pins(path: Path) -> list[Pin]:
    """Parse the requirements file with pip-audit's own parser; every line must be auditable."""
    if not path.is_file():
        raise AuditError(f"requirements file not found: {path}")
    try:
        parsed = RequirementsFile.from_file(str(path))
    except Exception as error:  # the parser raises its own, and TypeError on undecodable text
        raise AuditError(f"cannot parse {path}: {error}") from error
    problems = [
        f"line {line.line_number}: {' '.join(str(line.error_message).split())}"
        for line in parsed.invalid_lines
    ]
    for option in parsed.options:
        if any(option.options.get(key) for key in ("requirements", "constraints")):
            problems.append(
                f"line {option.requirement_line.line_number}: nested files are not audited "
                f"(pip-audit ignores them with --disable-pip): {option.requirement_line.line}"
            )
    pins: dict[tuple[str, Version], Pin] = {}
    for requirement in parsed.requirements:
        pin = _pin(requirement, problems)
        if pin is not None:
            pins.setdefault((pin.name, pin.version), pin)
    if problems:
        raise AuditError(
            f"{path}: requirements that cannot be audited:\n  " + "\n  ".join(problems)
        )
    return list(pins.values())


def _pin(requirement: Any, problems: list[str]) -> Pin | None:
    line = int(requirement.line_number)
    text = " ".join(str(requirement.requirement_line.line).split())
    if requirement.req is None or requirement.is_url or requirement.is_editable:
        problems.append(f"line {line}: not a pinned PyPI requirement: {text}")
        return None
    specifiers = list(requirement.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        problems.append(f"line {line}: not pinned with `==`: {text}")
        return None
    version = Version(specifiers[0].version)  # a valid `==` specifier holds a valid version
    marker = requirement.marker
    return Pin(
        name=canonicalize_name(str(requirement.name)),
        version=version,
        hashes=tuple(str(option) for option in requirement.hash_options),
        marker=None if marker is None else str(marker),
        line=line,
    )


def split_passes(pins: Sequence[Pin]) -> list[list[Pin]]:
    """Groups in which each name appears once, first fit, in file order."""
    passes: list[list[Pin]] = []
    for pin in pins:
        for group in passes:
            if all(other.name != pin.name for other in group):
                group.append(pin)
                break
        else:
            passes.append([pin])
    return passes


def pip_audit_command(requirements: Path, report: Path, osv_url: str | None) -> list[str]:
    command = [
        sys.executable, "-m", "pip_audit",
        "-r", str(requirements),
        "--require-hashes", "--disable-pip",
        "--format", "json", "--output", str(report),
        "--progress-spinner", "off",
    ]  # fmt: skip
    if osv_url is not None:
        command += ["-s", "osv", "--osv-url", osv_url]
    return command


def run_pip_audit(command: Sequence[str], env: dict[str, str]) -> int:
    """Run pip-audit (its output goes to this process's stdout and stderr)."""
    try:
        completed = subprocess.run(  # noqa: S603 (our interpreter, fixed arguments, no shell)
            list(command), env=env, check=False, timeout=PIP_AUDIT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as error:
        raise AuditError(f"pip-audit did not finish in {PIP_AUDIT_TIMEOUT_S} s") from error
    return completed.returncode


def offline_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict.fromkeys(_PROXY_VARIABLES, _BLACKHOLE_PROXY))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def read_report(path: Path) -> tuple[list[Any], list[Any]]:
    """The `dependencies` and `fixes` of one pip-audit JSON report, shape-checked."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AuditError(f"no readable pip-audit report at {path}: {error}") from error
    dependencies = report.get("dependencies") if isinstance(report, dict) else None
    fixes = report.get("fixes", []) if isinstance(report, dict) else None
    if not isinstance(dependencies, list) or not isinstance(fixes, list):
        raise AuditError(f"{path}: not a pip-audit JSON report")
    for entry in dependencies:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise AuditError(f"{path}: unexpected dependency entry {entry!r}")
        if "skip_reason" not in entry and not (
            isinstance(entry.get("version"), str) and isinstance(entry.get("vulns"), list)
        ):
            raise AuditError(f"{path}: unexpected dependency entry {entry!r}")
    return dependencies, fixes


def _vulnerability(entry: Any, where: Path) -> Vulnerability:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise AuditError(f"{where}: unexpected vulnerability entry {entry!r}")
    return Vulnerability(
        id=entry["id"],
        aliases=tuple(sorted(str(alias) for alias in entry.get("aliases", []))),
        fix_versions=tuple(str(version) for version in entry.get("fix_versions", [])),
    )


def evaluate(outcome: Outcome, group: Sequence[Pin], report: Path) -> list[Pin]:
    """Add one pass's report to `outcome`; return the pins the report does not account for."""
    dependencies, fixes = read_report(report)
    outcome.dependencies += dependencies
    outcome.fixes += fixes
    expected = {pin.name: pin for pin in group}
    for entry in dependencies:
        pin = expected.get(canonicalize_name(entry["name"]))
        if pin is None:
            continue  # not ours: cannot happen with --disable-pip, and harmless
        if "skip_reason" in entry:
            outcome.skipped.append((pin, str(entry["skip_reason"])))
        else:
            try:
                same = Version(entry["version"]) == pin.version
            except InvalidVersion:
                same = False
            if not same:
                continue
            vulns = [_vulnerability(vuln, report) for vuln in entry["vulns"]]
            outcome.audited.append((pin, vulns))
        del expected[pin.name]
    return list(expected.values())


@contextmanager
def vulnerability_service(osv_dir: Path | None) -> Iterator[tuple[str | None, OsvDatabase | None]]:
    """Yields (osv_url, database): (None, None) online, else a running offline mirror."""
    if osv_dir is None:
        yield None, None
        return
    try:
        database = load_database(osv_dir)
    except DatabaseError as error:
        raise AuditError(f"offline mode (--osv-dir / ${OSV_DIR_VARIABLE}): {error}") from error
    with running(database) as server:
        yield server.url + QUERY_PATH, database


def audit(requirements: Path, report: Path, osv_dir: Path | None) -> int:
    """The whole gate; prints its summary and returns the exit status."""
    report.unlink(missing_ok=True)  # a stale report must never be read as this run's
    pins = read_pins(requirements)
    passes = split_passes(pins)
    if importlib.util.find_spec("pip_audit") is None:
        raise AuditError(
            f"pip-audit is not installed for {sys.executable} (the `security` dependency group)"
        )
    version = metadata.version("pip-audit")
    outcome = Outcome()
    missing: list[Pin] = []
    with (
        vulnerability_service(osv_dir) as (osv_url, database),
        tempfile.TemporaryDirectory(prefix="imdb-audit-") as scratch,
    ):
        env = dict(os.environ) if osv_url is None else offline_environment()
        if database is None:
            print(f"audit: pip-audit {version}, online: pip-audit's default service (PyPI)")
        else:
            print(f"audit: pip-audit {version}, offline: {database.summary()}")
            print(f"audit: mirror at {osv_url}")
        markers = sum(pin.marker is not None for pin in pins)
        print(
            f"audit: {requirements}: {len(pins)} pinned requirements"
            f" ({markers} with environment markers, audited whatever the marker says),"
            f" {len(passes)} pip-audit run(s)",
            flush=True,
        )
        for index, group in enumerate(passes, start=1):
            pass_requirements = Path(scratch) / f"requirements-{index}.txt"
            pass_requirements.write_text("".join(pin.requirement() + "\n" for pin in group))
            pass_report = Path(scratch) / f"pip-audit-{index}.json"
            command = pip_audit_command(pass_requirements, pass_report, osv_url)
            status = run_pip_audit(command, env)
            if not pass_report.is_file():
                raise AuditError(f"pip-audit failed (exit {status}) and wrote no report")
            vulnerable_before = len(outcome.vulnerable)
            missing += evaluate(outcome, group, pass_report)
            if status != 0 and len(outcome.vulnerable) == vulnerable_before:
                # pip-audit exits 1 when it finds vulnerabilities; otherwise it failed.
                raise AuditError(f"pip-audit failed (exit {status}) without finding anything")
    write_report(
        report,
        outcome,
        requirements=requirements,
        version=version,
        osv_url=osv_url,
        database=database,
        passes=len(passes),
    )
    return summarise(outcome, missing, database, len(pins))


def write_report(
    path: Path,
    outcome: Outcome,
    *,
    requirements: Path,
    version: str,
    osv_url: str | None,
    database: OsvDatabase | None,
    passes: int,
) -> None:
    """pip-audit's JSON format (`dependencies`, `fixes`) plus an `audit` block saying how."""
    meta: dict[str, Any] = {
        "requirements": str(requirements),
        "pip_audit": version,
        "python": platform.python_version(),
        "passes": passes,
        "mode": "online" if database is None else "offline",
        "service": "pypi" if database is None else f"osv at {osv_url}",
    }
    if database is not None:
        meta["database"] = {
            "directory": str(database.directory),
            "records": len(database.records),
            "withdrawn": database.withdrawn,
            "malformed": [str(problem) for problem in database.malformed],
        }
    body = {"dependencies": outcome.dependencies, "fixes": outcome.fixes, "audit": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def summarise(
    outcome: Outcome, missing: list[Pin], database: OsvDatabase | None, pinned: int
) -> int:
    for pin, vulns in outcome.vulnerable:
        for vuln in vulns:
            aliases = f" ({', '.join(vuln.aliases)})" if vuln.aliases else ""
            fixes = ", ".join(vuln.fix_versions) or "none known"
            print(f"VULNERABLE {pin.name} {pin.version}: {vuln.id}{aliases}; fixed in: {fixes}")
    for pin, reason in outcome.skipped:
        print(f"NOT AUDITED {pin.name} {pin.version}: skipped by pip-audit: {reason}")
    for pin in missing:
        print(f"NOT AUDITED {pin.name} {pin.version}: missing from pip-audit's report")
    malformed = [] if database is None else database.malformed
    for problem in malformed:
        print(f"DATABASE malformed record file: {problem}")
    count = sum(len(vulns) for _, vulns in outcome.vulnerable)
    failures = [
        f"{count} vulnerabilities in {len(outcome.vulnerable)} package(s)" if count else "",
        f"{len(outcome.skipped) + len(missing)} not audited" if outcome.skipped or missing else "",
        f"{len(malformed)} malformed database records" if malformed else "",
    ]
    print(f"audit: {len(outcome.audited)}/{pinned} requirements audited")
    if not pinned:
        print("audit: nothing to audit: the file pins no third-party requirement")
    reasons = [failure for failure in failures if failure]
    if reasons:
        print(f"audit: FAILED: {'; '.join(reasons)}")
        return EXIT_FAILED
    print("audit: passed: every requirement audited, no known vulnerability")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.supply_chain.audit",
        description="pip-audit a hashed requirements file; fail on any vulnerability or any "
        "requirement left unaudited.",
    )
    parser.add_argument("--requirements", type=Path, required=True, help="hashed requirements")
    parser.add_argument("--report", type=Path, required=True, help="JSON report to write")
    parser.add_argument(
        "--osv-dir",
        type=Path,
        default=os.environ.get(OSV_DIR_VARIABLE) or None,
        help=f"offline mode: directory of OSV records (default: ${OSV_DIR_VARIABLE}); "
        "without it, pip-audit's online service",
    )
    args = parser.parse_args(argv)
    try:
        return audit(args.requirements, args.report, args.osv_dir)
    except AuditError as error:
        print(f"audit: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
