"""The test pyramid, selected by `--layer` and enforced while the tests run.

Layers, by what a test needs (a test's layer is its marker; unmarked tests are unit tests):

    unit         one process and what it runs to completion: pure code, in-process stubs, short
                 commands (a CLI, git, promtool). Every Python, `nox -s tests-3.X`, in parallel.
    integration  real parts that run beside the test: container engines, sshd, nginx, registries,
                 Prometheus, the API's server process, load generators. `nox -s integration`,
                 the default Python only.
    images       the release images built and run. `nox -s images`.
    gates        nox sessions run on a faulty copy of the repository. `nox -s gates`.
    benchmark    the benchmark's peers (the `benchmark` group). `nox -s benchmark`.

`pytest --layer=unit` (or any other layer) runs that layer alone; without it, every test runs.

A unit test that belongs elsewhere fails, with the reason and the marker to use, when it
  - starts a real part (`REAL_PARTS`, or the API's server process),
  - leaves a process running after its teardown (the process is then ended, by its PID), or
  - takes longer than UNIT_BUDGET_S: its own setup and call, without the fixtures it shares with
    other tests, which may take SHARED_FIXTURE_BUDGET_S each.
Budgets are wall time, far above what a unit test takes here (most take under 0.1 s), so
that only a test of the wrong kind, not a noisy machine, trips them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

LAYERS = ("unit", "integration", "images", "gates", "benchmark")
MARKED_LAYERS = LAYERS[1:]
UNIT_BUDGET_S = 5.0
SHARED_FIXTURE_BUDGET_S = 10.0
# How long a process a test ended may take to go away before it counts as left running.
EXIT_GRACE_S = 0.5

# Executables that are real parts: a unit test that starts one belongs in `integration`.
REAL_PARTS = {
    "podman": "a container engine",
    "dockerd": "a container engine",
    "conmon": "a container engine",
    "sshd": "an SSH server",
    "nginx": "a web server",
    "docker-registry": "a container registry",
    "prometheus": "Prometheus",
    "prometheus-pushgateway": "a Pushgateway",
    "wrk": "a load generator",
    "hey": "a load generator",
    "imdb-api": "the API's server process",
    "debootstrap": "a root file system build",
}
# Asking a program for its usage text, or to check a configuration file, does not start it.
USAGE_FLAGS = {"--help", "-h", "--version"}
CHECK_FLAGS = {"nginx": {"-t", "-T"}, "sshd": {"-t", "-T"}}


class LayerViolationError(AssertionError):
    """A test in the unit layer that needs what only another layer may have."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--layer",
        choices=LAYERS,
        help="run one layer of the test pyramid (unit: the unmarked tests); default: all",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in (
        ("integration", "starts real parts: engines, sshd, nginx, registries, Prometheus, servers"),
        ("images", "builds and runs the real container images (`nox -s images`)"),
        ("gates", "injects a fault into a throw-away copy and runs a nox session (slow)"),
        ("benchmark", "checks the benchmark's peers, which need the `benchmark` group"),
    ):
        config.addinivalue_line("markers", f"{name}: {description}")
    config.pluginmanager.register(UnitLayerGuard(), "unit-layer-guard")


def layer_of(item: pytest.Item) -> str:
    """The layer a test belongs to: its layer marker, or unit."""
    for name in MARKED_LAYERS:
        if item.get_closest_marker(name) is not None:
            return name
    return "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("--layer")
    if wanted is None:
        return
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (selected if layer_of(item) == wanted else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
    if wanted == "integration":
        items.sort(key=schedule_rank)  # stable: the order within a module stays


# The integration layer's longest modules (each holds one worker for minutes: real deploys on
# its fleet), longest first: xdist's loadscope hands modules out in collection order, and the
# short ones then fill the gaps instead of one long module starting last and running alone.
LONGEST_FIRST = (
    "tests/sandbox/test_sandbox_deploy.py",
    "tests/sandbox/test_sandbox_operations.py",
    "tests/sandbox/test_sandbox_promote.py",
)


def schedule_rank(item: pytest.Item) -> int:
    path = item.nodeid.partition("::")[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


def stand_in(program: str, env: Any) -> bool:
    """Whether `program` resolves to a file under the temporary directory: a stand-in that a
    test wrote (a fake debootstrap, say), not the real part of that name."""
    path = env.get("PATH") if isinstance(env, Mapping) else None
    found = shutil.which(program, path=path)
    return found is not None and Path(found).resolve().is_relative_to(
        Path(tempfile.gettempdir()).resolve()
    )


def command_line(args: Any, executable: Any = None) -> list[str]:
    """A Popen call's program and arguments as strings; a shell's `-c` command split up."""
    listed = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    argv = [os.fsdecode(arg) for arg in listed]
    if executable:
        argv[:1] = [os.fsdecode(executable)]
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        argv = argv[2].split()
    elif len(argv) == 1:
        argv = argv[0].split()
    return argv


def real_part(args: Any, executable: Any = None, env: Any = None) -> str | None:
    """What real part a command line starts, if any (None for everything else)."""
    argv = command_line(args, executable)
    if not argv or USAGE_FLAGS & set(argv[1:]):
        return None
    name = Path(argv[0]).name
    if CHECK_FLAGS.get(name, set()) & set(argv[1:]):
        return None
    if name in REAL_PARTS and not stand_in(argv[0], env):
        return f"{name} ({REAL_PARTS[name]})"
    if "imdb_api.cli" in argv[1:3] or "imdb_api" in argv[1:3]:
        return "python -m imdb_api.cli (the API's server process)"
    return None


class UnitLayerGuard:
    """The unit layer's three rules, checked around each unit test (see the module docstring)."""

    def __init__(self) -> None:
        self.current: pytest.Item | None = None
        self.own_seconds = 0.0
        self.shared_seconds = 0.0
        self.before: set[int] = set()
        self.shared_processes: set[int] = set()
        self.violation: LayerViolationError | None = None
        sys.addaudithook(self.audit)

    # ---- rule 1: no real part -----------------------------------------------------------

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.current is None or event != "subprocess.Popen":
            return
        executable, command = args[0], args[1]
        started = real_part(command, executable, args[3])
        if started is not None:
            # Raised in the test (Popen fails), and again at teardown in case it was caught.
            self.violation = LayerViolationError(
                f"a unit test started {started}: real parts belong in the integration layer "
                "(mark the test `integration`; `nox -s integration` runs it)"
            )
            raise self.violation

    # ---- rule 2: nothing left running -----------------------------------------------------

    @staticmethod
    def running_descendants() -> dict[int, str]:
        """PID -> command line of every process below this one that still runs."""
        found = {}
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = " ".join(child.cmdline()) or child.name()
        return found

    def left_running(self) -> dict[int, str]:
        deadline = time.monotonic() + EXIT_GRACE_S
        while True:
            ignored = self.before | self.shared_processes
            left = {
                pid: command
                for pid, command in self.running_descendants().items()
                if pid not in ignored
            }
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    @staticmethod
    def end(pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                process.wait(5)

    # ---- rule 3: the budget ---------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if self.current is None or fixturedef.scope == "function":
            return (yield)
        started, before = time.monotonic(), set(self.running_descendants())
        try:
            return (yield)
        finally:
            seconds = time.monotonic() - started
            self.shared_seconds += seconds
            # A fixture shared by several tests may keep what it started for them (a stand-in
            # server, say) until its own teardown.
            self.shared_processes |= set(self.running_descendants()) - before
            if seconds > SHARED_FIXTURE_BUDGET_S:
                raise LayerViolationError(
                    f"fixture {fixturedef.argname!r} took {seconds:.1f} s, over the unit "
                    f"layer's {SHARED_FIXTURE_BUDGET_S:g} s for a shared fixture: move its "
                    "tests to the integration layer, or make it cheaper"
                )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        if layer_of(item) != "unit":
            return (yield)
        self.current = item
        self.violation = None
        self.shared_seconds = 0.0
        self.before = set(self.running_descendants())
        started = time.monotonic()
        try:
            return (yield)
        finally:
            self.own_seconds = time.monotonic() - started - self.shared_seconds

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        if self.current is not item:
            return (yield)
        started = time.monotonic()
        try:
            result = yield
        except BaseException as error:
            if error is self.violation:  # the test failed of it: no second report at teardown
                self.violation = None
            raise
        seconds = self.own_seconds + time.monotonic() - started
        if seconds > UNIT_BUDGET_S:
            raise LayerViolationError(
                f"this unit test took {seconds:.1f} s (setup and call, shared fixtures aside), "
                f"over the unit layer's {UNIT_BUDGET_S:g} s budget: make it cheaper, or mark "
                "it `integration` if it needs real parts"
            )
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        if self.current is not item:
            return (yield)
        try:
            result = yield
        finally:
            self.current = None
        left = self.left_running()
        self.end(left)
        if self.violation is not None:
            raise self.violation
        if left:
            listing = "; ".join(f"{pid}: {command}" for pid, command in sorted(left.items()))
            raise LayerViolationError(
                f"a unit test left {len(left)} process(es) running after its teardown "
                f"(now ended): {listing}. A test that keeps processes running belongs in the "
                "integration layer; a unit test waits for what it starts."
            )
        return result
