"""Line and branch coverage thresholds over coverage.py's JSON report (`coverage json`).

    python -m imdb_deploy.supply_chain.coverage_gate COVERAGE_JSON --line 90 --branch 90

coverage.py's own `fail_under` checks one number that mixes lines and branches; this gate
checks each separately, from `totals`: line = covered_lines / num_statements and
branch = covered_branches / num_branches. A report that measured no statement, or no branch
data at all (coverage run without `branch = true`), fails: nothing measured proves nothing.

Exit status: 0 when both thresholds are met, 1 when either is not, 2 when the report is
unreadable or not coverage.py's JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ReportError(Exception):
    """The file is not a usable coverage.py JSON report."""


@dataclass(frozen=True)
class Measure:
    name: str
    covered: int
    total: int
    threshold: float
    unit: str

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.total if self.total else 100.0

    @property
    def passed(self) -> bool:
        return self.percent >= self.threshold

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        comparison = ">=" if self.passed else "<"
        return (
            f"{self.name:<16}{self.percent:6.2f}% ({self.covered}/{self.total} {self.unit})"
            f"  {comparison} {self.threshold:.2f}%  {verdict}"
        )


def _count(totals: dict[str, Any], key: str) -> int:
    value = totals.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReportError(f"totals.{key} is missing or not a count: {value!r}")
    return value


def read_totals(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from error
    totals = report.get("totals") if isinstance(report, dict) else None
    if not isinstance(totals, dict):
        raise ReportError(f"{path} has no `totals`: not a `coverage json` report")
    meta = report.get("meta")
    branches_off = isinstance(meta, dict) and meta.get("branch_coverage") is False
    if branches_off or "num_branches" not in totals:
        raise ReportError(f"{path} has no branch data: run coverage with branch = true")
    return totals


def measures(totals: dict[str, Any], line: float, branch: float) -> list[Measure]:
    return [
        Measure(
            "line coverage",
            _count(totals, "covered_lines"),
            _count(totals, "num_statements"),
            line,
            "statements",
        ),
        Measure(
            "branch coverage",
            _count(totals, "covered_branches"),
            _count(totals, "num_branches"),
            branch,
            "branches",
        ),
    ]


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"a percentage from 0 to 100, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.supply_chain.coverage_gate",
        description="Fail when line or branch coverage is under its threshold.",
    )
    parser.add_argument("report", type=Path, metavar="COVERAGE_JSON")
    parser.add_argument("--line", type=_threshold, default=90.0, help="percent (default 90)")
    parser.add_argument("--branch", type=_threshold, default=90.0, help="percent (default 90)")
    args = parser.parse_args(argv)
    try:
        results = measures(read_totals(args.report), args.line, args.branch)
    except ReportError as error:
        print(f"coverage-gate: error: {error}")
        return 2
    for measure in results:
        print(measure.line())
    if results[0].total == 0:
        print("coverage-gate: FAILED: no statement was measured")
        return 1
    if not all(measure.passed for measure in results):
        print("coverage-gate: FAILED")
        return 1
    print("coverage-gate: passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
