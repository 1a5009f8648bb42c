"""The line and branch coverage gate over `coverage json` reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.supply_chain import coverage_gate


def report(
    tmp_path: Path,
    *,
    statements: int = 200,
    lines: int = 190,
    branches: int | None = 100,
    covered_branches: int = 95,
    branch_coverage: bool = True,
) -> Path:
    totals: dict[str, Any] = {"num_statements": statements, "covered_lines": lines}
    if branches is not None:
        totals |= {"num_branches": branches, "covered_branches": covered_branches}
    body = {"meta": {"format": 3, "branch_coverage": branch_coverage}, "totals": totals}
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(body))
    return path


def gate(path: Path, *args: str) -> int:
    return coverage_gate.main([str(path), *args])


def test_both_thresholds_met(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(report(tmp_path), "--line", "95", "--branch", "95") == 0
    out = capsys.readouterr().out
    assert "line coverage    95.00% (190/200 statements)  >= 95.00%  ok" in out
    assert "branch coverage  95.00% (95/100 branches)  >= 95.00%  ok" in out
    assert "coverage-gate: passed" in out


@pytest.mark.parametrize(
    ("lines", "covered_branches", "failing"),
    [(179, 95, "line coverage"), (190, 89, "branch coverage"), (100, 10, "line coverage")],
)
def test_either_threshold_missed_fails(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: int,
    covered_branches: int,
    failing: str,
) -> None:
    path = report(tmp_path, lines=lines, covered_branches=covered_branches)
    assert gate(path) == 1
    out = capsys.readouterr().out
    assert any(row.startswith(failing) and row.endswith("FAIL") for row in out.splitlines())
    assert "coverage-gate: FAILED" in out


def test_just_under_is_not_rounded_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(report(tmp_path, statements=10_000, lines=8_999), "--line", "90") == 1
    assert "89.99%" in capsys.readouterr().out


def test_nothing_measured_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(report(tmp_path, statements=0, lines=0, branches=0, covered_branches=0)) == 1
    assert "no statement was measured" in capsys.readouterr().out


def test_no_branches_in_measured_code_counts_as_full(tmp_path: Path) -> None:
    assert gate(report(tmp_path, branches=0, covered_branches=0)) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot read"),
        ("[]", "no `totals`"),
        (json.dumps({"totals": {"num_statements": 1, "covered_lines": 1}}), "no branch data"),
        (
            json.dumps({"meta": {"branch_coverage": False}, "totals": {"num_branches": 0}}),
            "no branch data",
        ),
        (
            json.dumps({"totals": {"num_statements": "1", "num_branches": 0}}),
            "totals.covered_lines is missing",
        ),
        (
            json.dumps({"totals": {"num_statements": True, "covered_lines": 1, "num_branches": 0}}),
            "totals.num_statements is missing or not a count: True",
        ),
        (
            json.dumps(
                {
                    "totals": {
                        "num_statements": 1,
                        "covered_lines": 1,
                        "num_branches": -1,
                        "covered_branches": 0,
                    }
                }
            ),
            "not a count: -1",
        ),
    ],
)
def test_unusable_reports_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "coverage.json"
    path.write_text(content)
    assert gate(path) == 2
    assert message in capsys.readouterr().out


def test_missing_report_and_bad_thresholds(tmp_path: Path) -> None:
    assert gate(tmp_path / "missing.json") == 2
    for bad in ("101", "-1", "ninety"):
        with pytest.raises(SystemExit) as caught:
            gate(report(tmp_path), "--line", bad)
        assert caught.value.code == 2


def test_python_dash_m(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "imdb_deploy.supply_chain.coverage_gate",
        str(report(tmp_path)), "--line=90", "--branch=90",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout
