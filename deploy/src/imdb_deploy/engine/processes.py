"""Processes: tools run to completion (`run_tool`), and background processes that outlive one
command, tracked by PID file.

A PID file records the PID and the exact argv, so a stale file whose PID the kernel has since
given to another program is recognised and never signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ProcessError(RuntimeError):
    """A background process could not be started or stopped."""


def run_tool(
    argv: Sequence[str],
    *,
    error: type[Exception] = ProcessError,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300.0,
) -> str:
    """Run a tool (found on PATH) to completion with a fixed argv; its stdout, or `error` naming
    the command, its exit status and the end of its stderr."""
    executable = shutil.which(argv[0])
    if executable is None:
        raise error(f"`{argv[0]}` is not installed (not on PATH)")
    completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [executable, *argv[1:]],
        input=stdin,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if completed.returncode != 0:
        command = " ".join(argv[:3])
        raise error(
            f"`{command}` failed ({completed.returncode}): {completed.stderr.strip()[-800:]}"
        )
    return completed.stdout


@dataclass(frozen=True)
class ManagedProcess:
    """One named background process with its PID file and log under `state_dir`."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    def running_pid(self) -> int | None:
        """The PID if the recorded process still runs with the recorded argv, else None."""
        try:
            record = json.loads(self.pid_file.read_text())
            pid, argv = int(record["pid"]), list(record["argv"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if cmdline.split(b"\0")[:-1] == [arg.encode() for arg in argv] else None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start `argv` detached (own session, output to the log) and record it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        executable = shutil.which(argv[0])
        if executable is None:
            raise ProcessError(f"{self.name}: `{argv[0]}` not found")
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # posix_spawn, not Popen: the process outlives this object by design.
            pid = os.posix_spawn(
                executable,
                list(argv),
                dict(os.environ if env is None else env),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log)
        record = {"pid": pid, "argv": list(argv)}
        temporary = self.pid_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self.pid_file)
        return pid

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the recorded process (SIGTERM, then SIGKILL); True if one was running."""
        pid = self.running_pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), timeout, interval=0.05):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), timeout=5, interval=0.05)
        return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: ask the kernel instead
        return Path(f"/proc/{pid}").exists() and not _zombie(pid)
    return waited == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `check()` until it returns True or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
