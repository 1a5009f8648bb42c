"""Shared fixtures. With CI=true a missing prerequisite fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.report.timeline import TIMELINES_VAR

# The test pyramid: `--layer`, the layer markers and the unit layer's rules.
pytest_plugins = ["tests.layers", "tests.programs_guard", "pytester"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def running_in_ci() -> bool:
    """GitHub Actions and our CI both set CI=true."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


# CPython's sys.settrace refuses a new thread's tracer while another thread is inside settrace
# with the GIL released (python/cpython#98257); under coverage's thread tracing, a thread that
# starts at that instant (Fabric starts three per SSH command) dies before it runs, and pytest
# turns that into a test error. Only that message is passed over, and it is said so.
SETTRACE_RACE = "Cannot install a trace function while another trace function is being installed"


@pytest.hookimpl(trylast=True)  # after pytest's own, which installs the hook wrapped here
def pytest_configure(config: pytest.Config) -> None:
    collect = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == SETTRACE_RACE:
            print(f"\nnote: passed over CPython's settrace race in {unraisable.object!r}")
            return
        collect(unraisable)

    sys.unraisablehook = hook


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's top directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def require() -> Callable[[bool, str], None]:
    """`require(condition, what)`: skip when a prerequisite is missing, but fail under CI=true."""

    def check(condition: bool, what: str) -> None:
        if condition:
            return
        if running_in_ci():
            pytest.fail(f"prerequisite missing with CI=true: {what}")
        pytest.skip(f"prerequisite missing: {what}")

    return check


@pytest.fixture(scope="session")
def require_tool(require: Callable[[bool, str], None]) -> Callable[[str], str]:
    """`require_tool(name)` returns the tool's path, or skips (fails under CI) without it."""

    def find(name: str) -> str:
        path = shutil.which(name)
        require(path is not None, f"`{name}` on PATH")
        assert path is not None
        return path

    return find


@pytest.fixture(scope="session", autouse=True)
def deploy_timelines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Deploys the tests run (in process, or as CLIs and fab tasks in children) leave their
    timelines here, never in the repository's reports/deploys that `make report` reads."""
    directory = tmp_path_factory.mktemp("deploy-timelines")
    saved = os.environ.get(TIMELINES_VAR)
    os.environ[TIMELINES_VAR] = str(directory)
    yield directory
    if saved is None:
        del os.environ[TIMELINES_VAR]
    else:
        os.environ[TIMELINES_VAR] = saved
