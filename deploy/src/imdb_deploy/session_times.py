"""Run a nox command, then print each session's wall time from nox's own report.

    python -m imdb_deploy.session_times --report=reports/sessions-ci.json -- nox -t ci

nox prints its summary (each session's result, in rounded words); the table after it gives the
seconds, each session's share of the run and the total, so that the next regression shows at
the end of `make ci` and `make pipeline`. The exit status is the command's. Standard library
only: the Makefile runs it with the bootstrap interpreter, before any session's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def table(sessions: Sequence[dict[str, Any]], wall_s: float) -> str:
    """A plain-text table: session, result, seconds, share of the whole run; then the total."""
    rows = [
        (_name(entry), str(entry.get("result", "?")), float(entry["duration"]))
        for entry in sessions
        if isinstance(entry.get("duration"), (int, float))
    ]
    width = max([len("session"), *(len(name) for name, _, _ in rows)])
    lines = [f"{'session':<{width}}  {'result':<8}  {'wall s':>7}  {'share':>5}"]
    lines.append("-" * len(lines[0]))
    for name, result, seconds in rows:
        share = f"{100 * seconds / wall_s:.0f}%" if wall_s > 0 else "-"
        lines.append(f"{name:<{width}}  {result:<8}  {seconds:>7.1f}  {share:>5}")
    lines.append("-" * len(lines[0]))
    minutes, seconds = divmod(wall_s, 60)
    total = f"{wall_s:.1f}  ({int(minutes)} min {seconds:02.0f} s)"
    lines.append(f"{'total':<{width}}  {'':<8}  {total}")
    return "\n".join(lines)


def _name(entry: dict[str, Any]) -> str:
    """`tests-3.12` rather than `tests`: the signature names a parametrized session in full."""
    signatures = entry.get("signatures") or [entry.get("name", "?")]
    return str(signatures[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.session_times", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--report", type=Path, required=True, help="where nox writes its report")
    parser.add_argument("command", nargs="+", help="the nox command (after --)")
    args = parser.parse_args(argv)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.unlink(missing_ok=True)  # never read an earlier run's report as this one's
    started = time.monotonic()
    status = subprocess.call([*args.command, f"--report={args.report}"])  # noqa: S603
    wall_s = time.monotonic() - started
    try:
        sessions = json.loads(args.report.read_text())["sessions"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"session times: no nox report at {args.report} ({error})", file=sys.stderr)
        return status or 1
    print(f"\nsession wall times ({args.report}):\n{table(sessions, wall_s)}", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
