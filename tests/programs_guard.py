"""Every program a test starts is one the inventory (deploy/programs.txt) lists.

The inventory test (tests/deploy/test_programs.py) reads what the code runs from its source; what
code assembles at run time from variables, it cannot read. This plugin checks that part as the
tests run, in every layer: each process a test starts, and each command of a `sh -c` script it
starts (through sudo, env and the like), must be a listed program, a program of a Python
environment (a session's virtualenv, the bootstrapped tools, the interpreter running the tests),
or a stand-in the test wrote under the temporary directory. Anything else fails the test at the
start of that process, naming the program, so a fresh machine never meets a program the list
forgot.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy import programs
from tests.layers import command_line

REPO_ROOT = Path(__file__).resolve().parents[1]
# Interpreters by version (python3.11, the nox sessions' `python`) are the README's Pythons.
PYTHON = re.compile(r"python(3(\.\d+)?)?")


class UnlistedProgramError(AssertionError):
    """A test started a program the inventory does not list."""


def own_environments() -> list[Path]:
    """Where programs of the project's Python environments live: they come from uv.lock."""
    roots = [Path(sys.prefix), REPO_ROOT / ".nox", REPO_ROOT / ".venv", REPO_ROOT / ".tools"]
    return [*roots, Path(tempfile.gettempdir())]


def _under(path: Path, roots: list[Path]) -> bool:
    candidates = {path.absolute(), path.resolve()}
    return any(candidate.is_relative_to(root) for candidate in candidates for root in roots)


def started_programs(args: Any, executable: Any = None) -> Iterator[str]:
    """The programs a Popen call starts: its own, through wrappers, and a shell script's."""
    listed = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    argv = [os.fsdecode(arg) for arg in listed]
    if executable:
        argv[:1] = [os.fsdecode(executable)]
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash", "dash"} and "-c" in argv[1:-1]:
        yield argv[0]
        yield from (program for program, _ in programs.shell_programs(argv[argv.index("-c") + 1]))
        return
    if len(argv) == 1 and " " in argv[0]:  # a shell=True command line
        argv = command_line(argv)
    yield from programs.through_wrappers(argv)


def unlisted(
    args: Any, executable: Any, env: Any, listed: Mapping[str, programs.Entry]
) -> list[str]:
    path = env.get("PATH") if isinstance(env, Mapping) else None
    roots = own_environments()
    missing = []
    for word in started_programs(args, executable):
        found = word if "/" in word else shutil.which(word, path=path)
        if found is not None and _under(Path(found), roots):
            continue
        name = Path(word).name
        if name in listed or PYTHON.fullmatch(name) or name in programs.SHELL_BUILTINS:
            continue
        missing.append(name)
    return missing


class ProgramsGuard:
    """Checks each subprocess a test starts against the inventory (see the module docstring)."""

    def __init__(self) -> None:
        self.listed = programs.load_inventory(REPO_ROOT / programs.INVENTORY)
        self.active = False
        self.violation: UnlistedProgramError | None = None
        sys.addaudithook(self.audit)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event != "subprocess.Popen":
            return
        missing = unlisted(args[1], args[0], args[3], self.listed)
        if missing:
            # Raised in the test (Popen fails), and again at teardown in case it was caught.
            self.violation = UnlistedProgramError(
                f"the test started {', '.join(missing)}, which {programs.INVENTORY} does not "
                "list: add each with the Debian package that provides it (`dpkg -S`), so that "
                "deploy/system-packages.sh installs it on a fresh machine"
            )
            raise self.violation

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.active, self.violation = True, None
        try:
            return (yield)
        finally:
            self.active = False

    def _reported(self) -> Generator[None, None, None]:
        try:
            return (yield)
        except BaseException as error:
            if error is self.violation:  # the test failed of it: no second report at teardown
                self.violation = None
            raise

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._reported())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._reported())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        result = yield
        if self.violation is not None:
            violation, self.violation = self.violation, None
            raise violation
        return result


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ProgramsGuard(), "programs-guard")
