"""The test pyramid's rules fail the tests that break them (tests/layers.py)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from tests import layers
from tests.conftest import SETTRACE_RACE

# One run of a small suite in a child pytest: a good unit test, one of each kind that belongs
# in another layer, and an integration test that may do what unit tests may not.
SUITE = """
import subprocess
import sys
import time

import pytest


def test_good():
    subprocess.run(["true"], check=True)  # a short command, run to completion


def test_starts_a_real_part():
    subprocess.run(["wrk", "-d1s", "http://127.0.0.1:9/"], check=False)


def test_swallows_the_refusal():
    try:
        subprocess.Popen(["podman", "system", "service"])
    except Exception:
        pass


def test_leaves_a_process_running():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_too_slow():
    time.sleep(0.3)


@pytest.mark.integration
def test_integration_may():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.kill()
    process.wait()
"""
CONFTEST = """
pytest_plugins = ["tests.layers"]


def pytest_configure(config):
    import tests.layers

    tests.layers.UNIT_BUDGET_S = 0.2
"""


def test_the_unit_layer_fails_what_belongs_elsewhere(
    pytester: pytest.Pytester, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(repo_root))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # a second faster: only ours
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    output = result.stdout.str()
    result.assert_outcomes(passed=4, failed=2, errors=2)
    assert "a unit test started wrk (a load generator)" in output
    assert "a unit test started podman (a container engine)" in output
    assert "ERROR at teardown of test_swallows_the_refusal" in output
    assert "ERROR at teardown of test_leaves_a_process_running" in output
    assert "left 1 process(es) running after its teardown (now ended)" in output
    assert "over the unit layer's 0.2 s budget" in output


def test_layer_selects_one_layer(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.layers"]\n')
    pytester.makepyfile(
        test_two="import pytest\n\ndef test_unit():\n    pass\n\n"
        "@pytest.mark.integration\ndef test_real():\n    pass\n"
    )
    unit = pytester.runpytest_inprocess("--layer=unit", "-p", "no:cacheprovider")
    unit.assert_outcomes(passed=1, deselected=1)
    real = pytester.runpytest_inprocess("--layer=integration", "-p", "no:cacheprovider")
    real.assert_outcomes(passed=1, deselected=1)


@pytest.mark.parametrize(
    ("args", "started"),
    [
        (["podman", "run", "x"], "podman (a container engine)"),
        (["/usr/sbin/sshd", "-f", "c"], "sshd (an SSH server)"),
        (["/bin/sh", "-c", "nginx -c conf -p prefix"], "nginx (a web server)"),
        ("docker-registry serve c.yml", "docker-registry (a container registry)"),
        ([sys.executable, "-m", "imdb_api.cli", "--port", "1"], "python -m imdb_api.cli"),
        ([b"wrk", b"-t1", b"http://127.0.0.1:1/"], "wrk (a load generator)"),
    ],
)
def test_real_parts_are_recognised(args: list[str] | str, started: str) -> None:
    found = layers.real_part(args)
    assert found is not None
    assert found.startswith(started)


@pytest.mark.parametrize(
    "args",
    [
        ["imdb-api", "--help"],
        [sys.executable, "-m", "imdb_api.cli", "--version"],
        ["git", "status"],
        ["/bin/sh", "-c", "nginx -t -q -c /tmp/x/nginx.conf"],
        ["promtool", "check", "rules", "x.yml"],
        [sys.executable, "-m", "imdb_trainer.cli", "verify", "x"],
    ],
)
def test_short_commands_and_usage_texts_are_not_real_parts(args: list[str]) -> None:
    assert layers.real_part(args) is None


def test_a_stand_in_the_test_wrote_is_not_the_real_part(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "debootstrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert layers.real_part(["debootstrap", "x"], env={"PATH": str(fake.parent)}) is None
    assert layers.real_part([str(fake), "x"]) is None


def test_only_cpythons_settrace_race_is_passed_over(capsys: pytest.CaptureFixture[str]) -> None:
    """tests/conftest.py: a thread that dies of the race is said, not failed; see SETTRACE_RACE."""
    race = RuntimeError(SETTRACE_RACE)
    unraisable = types.SimpleNamespace(
        exc_type=RuntimeError,
        exc_value=race,
        exc_traceback=None,
        err_msg=None,
        object="handle_stderr",
    )
    sys.unraisablehook(unraisable)
    assert "passed over CPython's settrace race in 'handle_stderr'" in capsys.readouterr().out


def test_the_integration_layer_hands_out_its_longest_modules_first() -> None:
    nodeids = [
        "tests/api/test_api_process.py::test_a",
        "tests/sandbox/test_sandbox_promote.py::test_b",
        "tests/sandbox/test_sandbox_deploy.py::test_c[x]",
        "tests/sandbox/test_sandbox_deploy.py::test_d",
    ]
    items = [types.SimpleNamespace(nodeid=nodeid) for nodeid in nodeids]
    ordered = sorted(items, key=layers.schedule_rank)  # type: ignore[arg-type]
    assert [item.nodeid for item in ordered] == [nodeids[2], nodeids[3], nodeids[1], nodeids[0]]
    assert all((Path(__file__).parents[2] / path).is_file() for path in layers.LONGEST_FIRST)
