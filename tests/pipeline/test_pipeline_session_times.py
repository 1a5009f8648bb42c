"""The wall-time table at the end of `make ci` and `make pipeline` (imdb_deploy.session_times)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from imdb_deploy.session_times import main, table

# A stand-in for nox: writes a report like nox's to the path its --report= names, then exits
# with the status given as its first argument.
FAKE_NOX = """
import json, sys
report = sys.argv[-1].removeprefix("--report=")
sessions = [
    {"name": "lint", "result": "success", "duration": 5.25},
    {"name": "tests", "signatures": ["tests-3.12"], "result": "failed", "duration": 41.0},
    {"name": "images", "result": "skipped"},
]
json.dump({"result": 1, "sessions": sessions}, open(report, "w"))
sys.exit(int(sys.argv[1]))
"""


def test_table_lists_seconds_shares_and_the_total() -> None:
    text = table([{"name": "lint", "result": "success", "duration": 30.0}], 120.0)
    lines = text.splitlines()
    assert lines[0].split() == ["session", "result", "wall", "s", "share"]
    assert lines[2].split() == ["lint", "success", "30.0", "25%"]
    assert lines[-1].split() == ["total", "120.0", "(2", "min", "00", "s)"]


def test_main_prints_the_table_and_keeps_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "reports" / "sessions.json"
    report.parent.mkdir()
    report.write_text("stale")  # an earlier run's report is never read as this one's
    command = [sys.executable, "-c", FAKE_NOX]
    assert main([f"--report={report}", "--", *command, "3"]) == 3
    out = capsys.readouterr().out
    assert "lint" in out
    assert "tests-3.12  failed" in out
    assert "41.0" in out
    assert "images" not in out  # nox gives no duration for a session it did not run
    assert json.loads(report.read_text())["result"] == 1
    assert main([f"--report={report}", "--", *command, "0"]) == 0


def test_a_command_that_writes_no_report_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([f"--report={tmp_path / 'r.json'}", "--", sys.executable, "-c", "pass"])
    assert code == 1
    assert "no nox report at" in capsys.readouterr().err
