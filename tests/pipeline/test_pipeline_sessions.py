"""The pipeline's public interface: session names, tags, defaults, and the thin layers over them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nox.project
import pytest
import yaml

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
CI_SESSIONS = {
    "lint",
    "typecheck",
    "security",
    *(f"tests-{version}" for version in PYTHONS),
    "integration",
    "coverage",
    "gates",
    "sbom",
    "images",
}


def nox_list(repo_root: Path, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "nox", "--list", "--json", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    sessions: list[dict[str, Any]] = json.loads(result.stdout)
    return sessions


def test_ci_tag_lists_every_pipeline_session(repo_root: Path) -> None:
    listed = {session["session"] for session in nox_list(repo_root, "-t", "ci")}
    assert listed == CI_SESSIONS


def test_images_requires_no_other_session_so_its_arguments_reach_it_alone(
    repo_root: Path,
) -> None:
    """nox hands the command line's posargs to every session it runs, required ones included:
    `nox -s images -- --platform=...` once failed inside `train`. `images` trains (or reuses the
    model) itself, with no arguments of its own to pass on."""
    assert [session["session"] for session in nox_list(repo_root, "-s", "images")] == ["images"]


DEPLOY_SESSIONS = {"sandbox", "deploy", "promote", "rollback", "prune", "deliver", "report"}


def test_every_session_has_a_docstring(repo_root: Path) -> None:
    extra = {"fmt", "fresh", "rehearse", *DEPLOY_SESSIONS}
    sessions = nox_list(repo_root, "-s", *sorted(extra), *sorted(CI_SESSIONS))
    assert {session["session"] for session in sessions} == CI_SESSIONS | extra
    for session in sessions:
        assert session["description"], f"{session['name']} has no docstring"


def test_test_sessions_cover_the_pythons_of_the_classifiers(repo_root: Path) -> None:
    classifiers = nox.project.load_toml(repo_root / "pyproject.toml")["project"]["classifiers"]
    declared = sorted(
        match.group(1)
        for classifier in classifiers
        if (match := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", classifier))
    )
    assert declared == PYTHONS
    tests = [s for s in nox_list(repo_root, "-t", "tests") if s["session"].startswith("tests-")]
    assert [session["python"] for session in tests] == PYTHONS


def test_heavy_sessions_are_not_default(repo_root: Path) -> None:
    default = {session["session"] for session in nox_list(repo_root)}
    assert "gates" not in default
    assert "fmt" not in default
    assert "fresh" not in default
    assert "lint" in default


def test_makefile_targets_are_one_nox_line_each(repo_root: Path) -> None:
    makefile = (repo_root / "Makefile").read_text()
    for target in ("ci", "test", "lint", "fmt", "help"):
        assert re.search(rf"^{target}:.*## ", makefile, re.MULTILINE), target
    recipes = re.findall(r"^\t(.+)$", makefile, re.MULTILINE)
    nox_recipes = [line.removeprefix("$(TIMED) ") for line in recipes if "$(NOX)" in line]
    assert len(nox_recipes) >= 8
    assert all(line.startswith("$(NOX) ") for line in nox_recipes)


def test_make_help_lists_the_targets(repo_root: Path) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    listed = re.findall(r"^\s+(?:\x1b\[[0-9;]*m)?([a-z-]+)", result.stdout, re.MULTILINE)
    for target in ("pipeline", "ci", "test", "lint", "fmt", "typecheck", "security", "sbom"):
        assert target in listed


def test_uv_is_pinned_once_for_make_and_github(repo_root: Path) -> None:
    makefile = (repo_root / "Makefile").read_text()
    workflow = (repo_root / ".github" / "workflows" / "ci.yml").read_text()
    make_pin = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    ci_pin = re.search(r'^  UV_VERSION: "(\S+)"$', workflow, re.MULTILINE)
    assert make_pin is not None
    assert ci_pin is not None
    assert make_pin.group(1) == ci_pin.group(1)


def test_workflow_is_a_thin_matrix_over_nox(repo_root: Path) -> None:
    workflow = (repo_root / ".github" / "workflows" / "ci.yml").read_text()
    assert "$NOX -l --json -t ci" in workflow
    assert '            $NOX -s "$SESSION"\n' in workflow
    # The sessions that run as root are named once, and are sessions of the matrix.
    root = re.findall(r"^  ROOT_SESSIONS: '(.+)'$", workflow, re.MULTILINE)
    assert len(root) == 1
    assert set(json.loads(root[0])) == {"integration", "images"} <= CI_SESSIONS
    assert "permissions: {}" in workflow
    assert "cancel-in-progress: ${{ github.event_name == 'pull_request' }}" in workflow
    for uses in re.findall(r"uses: (\S+)", workflow):
        if uses.startswith("$/"):  # this repository's own (reusable) workflow
            continue
        assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", uses), f"not pinned by SHA: {uses}"


def test_delivery_starts_only_after_green_ci_and_only_calls_nox(repo_root: Path) -> None:
    workflows = repo_root / ".github" / "workflows"
    ci = yaml.safe_load((workflows / "ci.yml").read_text())
    cd = yaml.safe_load((workflows / "cd.yml").read_text())
    # cd.yml has no trigger of its own: ci.yml calls it once every CI job passed, on a push.
    assert cd[True] == {"workflow_call": None}  # YAML reads the key `on` as True
    call = ci["jobs"]["cd"]
    assert (call["needs"], call["uses"]) == ("ci-ok", "$/.github/workflows/cd.yml")
    assert call["if"] == "github.event_name == 'push'"
    # Every job a thin call of nox sessions (plus the file moves between jobs).
    for name, job in cd["jobs"].items():
        for step in job["steps"]:
            command = step.get("run")
            if command is not None:
                assert "$NOX -s " in command or "system-packages.sh" in command, (name, command)
    # Production is only ever promoted to, never built for or deployed to directly.
    production = [s.get("run", "") for s in cd["jobs"]["production"]["steps"]]
    # Exactly the digest the run planned (or deployed to staging itself), nothing newer.
    assert '$NOX -s promote -- production --approve --digest "$PLANNED"' in production
    planned = cd["jobs"]["production"]["steps"][2]["env"]["PLANNED"]
    assert planned == "${{ needs.staging.outputs.digest || needs.plan.outputs.digest }}"
    assert not any("-s deploy" in command for command in production)
    assert cd["jobs"]["production"]["environment"] == "production"


@pytest.mark.parametrize("command", ["make pipeline", "make test"])
def test_readme_quick_start_has_the_two_commands(repo_root: Path, command: str) -> None:
    readme = (repo_root / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f"\n{command}\n" in quick_start


def test_ci_script_runs_the_readme_test_command(repo_root: Path) -> None:
    script = (repo_root / ".ci" / "run").read_text()
    assert re.search(r"^make test$", script, re.MULTILINE)


def test_pipeline_stops_before_deploying_anything_a_gate_refused(repo_root: Path) -> None:
    """nox runs every selected session by default; the pipeline must not deploy after a failure,
    and only the pipeline reuses stages that passed (`make test` and `make ci` always run)."""
    makefile = (repo_root / "Makefile").read_text()
    assert "\t$(TIMED) $(NOX) -t pipeline --stop-on-first-error\n" in makefile
    assert re.findall(r"^(\S+): export MLOPS_STAGE_CACHE", makefile, re.MULTILINE) == ["pipeline"]
    order = [session["session"] for session in nox_list(repo_root, "-t", "pipeline")]
    assert order[-1] == "deliver"


def test_releases_are_built_multi_arch_signed_and_attested_in_cd(repo_root: Path) -> None:
    cd = yaml.safe_load((repo_root / ".github" / "workflows" / "cd.yml").read_text())
    images = cd["jobs"]["images"]
    build = next(step for step in images["steps"] if step.get("id") == "images")
    assert build["env"]["MLOPS_PLATFORMS"] == "linux/amd64,linux/arm64"
    assert build["env"]["MLOPS_SIGNING_KEY"] == "${{ secrets.SIGNING_KEY }}"
    assert build["env"]["MLOPS_REQUIRE_TRIVY"] == "1"
    attest = next(s for s in images["steps"] if "attest-build-provenance" in s.get("uses", ""))
    assert attest["with"]["subject-digest"] == "${{ steps.images.outputs.api-digest }}"
    assert images["permissions"]["attestations"] == "write"
    assert images["environment"] == "signing"
    # make pipeline builds the same way.
    makefile = (repo_root / "Makefile").read_text()
    assert "pipeline: export MLOPS_PLATFORMS ?= linux/amd64,linux/arm64" in makefile
