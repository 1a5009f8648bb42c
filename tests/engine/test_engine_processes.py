"""Background processes tracked by PID file: start, find, stop, and never signal a stranger."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from imdb_deploy.engine.processes import ManagedProcess, wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_start_records_and_stop_ends_the_process(tmp_path: Path) -> None:
    process = ManagedProcess("sleeper", tmp_path / "state")
    pid = process.start(SLEEPER)
    # Between spawn and exec the child still shows our own command line.
    assert wait_until(lambda: process.running_pid() == pid, timeout=5)
    assert json.loads(process.pid_file.read_text()) == {"pid": pid, "argv": SLEEPER}
    assert process.stop(timeout=5)
    assert process.running_pid() is None
    assert not Path(f"/proc/{pid}").exists()
    assert not process.stop()


def test_stubborn_process_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    ]
    process = ManagedProcess("stubborn", tmp_path)
    pid = process.start(stubborn)
    assert wait_until(lambda: "ready" in process.log_tail(), timeout=10)
    assert process.stop(timeout=0.3)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=5)


def test_a_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    process = ManagedProcess("stale", tmp_path)
    # Our own PID runs, but with a different command line than the one recorded.
    process.pid_file.write_text(json.dumps({"pid": os.getpid(), "argv": ["not", "us"]}))
    assert process.running_pid() is None
    assert not process.stop()
    assert not process.pid_file.exists()


def test_unreadable_or_dead_records_mean_not_running(tmp_path: Path) -> None:
    process = ManagedProcess("broken", tmp_path)
    assert process.running_pid() is None
    process.pid_file.write_text("{not json")
    assert process.running_pid() is None
    process.pid_file.write_text(json.dumps({"pid": 2**22 + 12345, "argv": ["gone"]}))
    assert process.running_pid() is None
    assert process.log_tail() == "(no log)"


def test_wait_until_gives_up_after_the_timeout() -> None:
    assert not wait_until(lambda: False, timeout=0.2, interval=0.05)
    assert wait_until(lambda: True, timeout=0)
