"""Every gate can fail: a fault injected into a throw-away copy of the repository makes the
matching nox session exit non-zero, for the reason injected.

These run real sessions (fresh virtualenvs from the uv cache), so they are marked `gates` and run by
`nox -s gates`, not by the per-Python test sessions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.gates

SESSION_TIMEOUT_S = 600
API_INIT = Path("services/api/src/imdb_api/__init__.py")


@pytest.fixture
def repo_copy(repo_root: Path, tmp_path: Path, require_tool: Callable[[str], str]) -> Path:
    """The working tree as git sees it (tracked and new files, minus ignored ones), copied."""
    require_tool("uv")
    require_tool("git")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo_root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path / "repo"
    for relative in filter(None, listed.split("\0")):
        source = repo_root / relative
        if source.is_file():
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / relative)
    # mypy's cache is only a speed-up; the copy's own sources are still re-checked.
    if (repo_root / ".mypy_cache").is_dir():
        shutil.copytree(repo_root / ".mypy_cache", copy / ".mypy_cache")
    return copy


def run_session(
    copy: Path, session: str, *posargs: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nox", "--non-interactive", "-s", session]
    if posargs:
        command += ["--", *posargs]
    # Plain output to search; nox refuses NO_COLOR beside FORCE_COLOR (which CI jobs set).
    plain = {name: value for name, value in os.environ.items() if name != "FORCE_COLOR"}
    return subprocess.run(
        command,
        cwd=copy,
        env={**plain, "NO_COLOR": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT_S,
        check=False,
    )


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(text)


def passed(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"session failed:\n{output[-4000:]}"
    return output


def assert_failed_because(result: subprocess.CompletedProcess[str], *evidence: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"session passed despite the fault:\n{output[-4000:]}"
    for text in evidence:
        assert text in output, f"{text!r} not in the session output:\n{output[-4000:]}"


def test_lint_error_fails_lint(repo_copy: Path) -> None:
    append(repo_copy / API_INIT, "\nimport os\n")
    assert_failed_because(run_session(repo_copy, "lint"), "F401", "Session lint failed")


def test_unformatted_code_fails_lint(repo_copy: Path) -> None:
    append(repo_copy / API_INIT, "\nVALUE = {  'a':1 }\n")
    # black's own diff of the line, not the word "black" (nox echoes the command it runs).
    assert_failed_because(
        run_session(repo_copy, "lint"), '+VALUE = {"a": 1}', "Session lint failed"
    )


def test_type_error_fails_typecheck(repo_copy: Path) -> None:
    append(repo_copy / API_INIT, '\n\ndef answer() -> int:\n    return "forty-two"\n')
    assert_failed_because(
        run_session(repo_copy, "typecheck"), "Incompatible return value", "Session typecheck failed"
    )


def test_bandit_finding_fails_security(repo_copy: Path) -> None:
    append(
        repo_copy / API_INIT,
        "\n\nimport subprocess\n\n\ndef run(command: str) -> None:\n"
        "    subprocess.run(command, shell=True, check=True)\n",
    )
    assert_failed_because(run_session(repo_copy, "security"), "B602", "Session security failed")


def test_vulnerable_pin_fails_security(repo_copy: Path) -> None:
    # Jinja 2.10 has a sandbox escape (PYSEC-2019-217, CVE-2019-10906), fixed in 2.10.1.
    pyproject = repo_copy / "services" / "api" / "pyproject.toml"
    text = pyproject.read_text()
    assert "dependencies = [" in text
    pinned = text.replace("dependencies = [", 'dependencies = [\n    "jinja2==2.10",', 1)
    pyproject.write_text(pinned)
    subprocess.run(["uv", "lock", "--quiet"], cwd=repo_copy, check=True, timeout=300)
    assert_failed_because(
        run_session(repo_copy, "security"), "PYSEC-2019-217", "Session security failed"
    )


def test_failing_test_fails_tests(repo_copy: Path) -> None:
    (repo_copy / "tests" / "test_injected_failure.py").write_text(
        "def test_injected() -> None:\n    assert 6 * 7 == 43\n"
    )
    result = run_session(repo_copy, "tests-3.11", "tests/test_injected_failure.py")
    assert_failed_because(result, "1 failed", "Session tests-3.11 failed")


def test_the_stage_cache_never_hides_a_failure(repo_copy: Path) -> None:
    """A warm pipeline reuses a stage only on the very content it passed on."""
    cached = {"MLOPS_STAGE_CACHE": "1"}
    # Not a git checkout (a source archive, say): nothing can be fingerprinted, the stage runs.
    assert "stage cache off: " in passed(run_session(repo_copy, "lint", env=cached))
    subprocess.run(["git", "init", "-q", str(repo_copy)], check=True)
    subprocess.run(["git", "-C", str(repo_copy), "add", "-A"], check=True)
    clean = (repo_copy / API_INIT).read_text()

    assert "reused:" not in passed(run_session(repo_copy, "lint", env=cached))
    assert "reused: lint passed at" in passed(run_session(repo_copy, "lint", env=cached))

    append(repo_copy / API_INIT, "\nimport os\n")  # not even staged: the working tree counts
    assert_failed_because(run_session(repo_copy, "lint", env=cached), "F401", "lint failed")

    (repo_copy / API_INIT).write_text(clean)  # back to content that passed
    assert "reused: lint passed at" in passed(run_session(repo_copy, "lint", env=cached))


def test_a_program_missing_from_the_inventory_fails_the_tests(repo_copy: Path) -> None:
    """A new program in the code, not in deploy/programs.txt: the unit layer's inventory test
    fails and names it, before a fresh machine would meet it."""
    (repo_copy / API_INIT.parent / "injected.py").write_text(
        "import subprocess\n\n\ndef moo() -> None:\n"
        '    subprocess.run(["cowsay", "moo"], check=True)\n'
    )
    subprocess.run(["git", "init", "-q", str(repo_copy)], check=True)  # the test reads git's list
    subprocess.run(["git", "-C", str(repo_copy), "add", "-A"], check=True)
    result = run_session(repo_copy, "tests-3.11", "tests/deploy/test_programs.py")
    assert_failed_because(
        result,
        "cowsay is run (services/api/src/imdb_api/injected.py:5) but not listed",
        "Session tests-3.11 failed",
    )
