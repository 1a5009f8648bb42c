"""Retries, unit by unit: a pull step tried again only on a transient registry error, with
backoff, and an SSH connect tried again only when the failure may pass (not a changed host key).
The real outages (a registry process stopped mid-deploy) are in tests/sandbox/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imdb_deploy.bluegreen.config import Environment, Host, Redactor
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.bluegreen.runner import HostRunner, Result, UnreachableError
from tests.bluegreen.test_bluegreen_cli import make_env

REFUSED = Result(
    "", "Error: pinging container registry r: dial tcp: connect: connection refused", 125
)
UNSIGNED = Result("", "Error: Source image rejected: A signature was required", 125)
PULLED = Result("pulled\n", "", 0)


def fast(environment: Environment) -> Environment:
    """Backoff of milliseconds, so the unit tests do not sleep."""
    pull = environment.pull.model_copy(update={"backoff_s": 0.001, "max_backoff_s": 0.002})
    return environment.model_copy(update={"pull": pull})


class ScriptedRunner(HostRunner):
    """Answers each command with the next scripted result."""

    script: Iterator[Result]

    def run(self, command: str, timeout_s: float | None = None, check: bool = True) -> Result:
        return next(self.script)


def orchestrator(tmp_path: Path, *results: Result) -> tuple[Orchestrator, list[str]]:
    env = fast(make_env(tmp_path / "roots", name="sandbox-test"))
    lines: list[str] = []

    def runner(environment: Environment, host: Host, redact: Redactor) -> HostRunner:
        scripted = ScriptedRunner(environment, host, redact, {})
        scripted.script = iter(results)
        return scripted

    return Orchestrator(env, environ={}, echo=lines.append, runner_factory=runner), lines


def test_a_transient_failure_is_tried_again_and_each_retry_is_a_timeline_line(
    tmp_path: Path,
) -> None:
    orch, lines = orchestrator(tmp_path, REFUSED, REFUSED, PULLED)
    result = orch._pull_step(orch.environment.hosts[0], "pull", "podman pull x")
    assert result == PULLED
    retries = [line for line in lines if "FAILED pull retry" in line]
    assert len(retries) == 2
    assert "try 2 of 4" in retries[0]
    assert retries[0].endswith("connect: connection refused")


def test_a_registry_that_stays_down_gives_the_last_failure_after_all_attempts(
    tmp_path: Path,
) -> None:
    orch, lines = orchestrator(tmp_path, *[REFUSED] * 4, PULLED)
    result = orch._pull_step(orch.environment.hosts[0], "signatures", "fetch")
    assert result == REFUSED
    assert len([line for line in lines if "signatures retry" in line]) == 3  # 4 attempts


def test_a_refused_image_is_not_tried_again(tmp_path: Path) -> None:
    orch, lines = orchestrator(tmp_path, UNSIGNED, PULLED)
    assert orch._pull_step(orch.environment.hosts[0], "pull", "podman pull x") == UNSIGNED
    assert not [line for line in lines if "retry" in line]


class FlakyConnect(HostRunner):
    """A connect that fails `failures` times (transient or not), then opens nothing real."""

    def __init__(self, environment: Environment, failures: int, transient: bool) -> None:
        super().__init__(environment, environment.hosts[0], Redactor([]), {})
        self.connect_backoff_s = 0.001
        self.failures, self.transient, self.calls = failures, transient, 0

    def _connect(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise UnreachableError(self.name, "cannot connect", transient=self.transient)
        return _Opened()


class _Opened:
    is_connected = True

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("failures", "transient", "calls", "connects"),
    [
        (0, True, 1, True),
        (2, True, 3, True),  # a blip: the third try connects
        (3, True, 3, False),  # still down after connect_attempts (3): the error stands
        (5, False, 1, False),  # a changed host key or refused login: never tried again
    ],
)
def test_ssh_connects_are_retried_only_while_the_failure_may_pass(
    failures: int, transient: bool, calls: int, connects: bool
) -> None:
    runner = FlakyConnect(make_env(), failures, transient)
    if connects:
        assert isinstance(runner.connection(), _Opened)
    else:
        with pytest.raises(UnreachableError, match="cannot connect"):
            runner.connection()
    assert runner.calls == calls
