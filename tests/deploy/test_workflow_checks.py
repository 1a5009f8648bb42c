"""The workflows' static rules: on this repository (no findings), and on the faults each rule
exists for (stop 22's ci.yml had two: a called job asking for more than its caller grants, and
a push able to cancel a delivery)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_deploy import workflow_checks
from imdb_deploy.workflow_checks import Workflow

CALLEE = """\
# cd: delivers.
# Secrets: DEPLOY_SSH_KEY.
on:
  workflow_call:
permissions: {}
jobs:
  images:
    permissions:
      contents: read
      id-token: write
    steps: [{run: "echo ${{ secrets.DEPLOY_SSH_KEY }} ${{ secrets.GITHUB_TOKEN }}"}]
  staging:
    environment: staging
    permissions:
      contents: read
    steps: [{run: "true"}]
"""


def caller(
    uses: str = "./.github/workflows/cd.yml", grants: str = "", cancel: str = "false"
) -> str:
    return f"""\
# ci
on: [push, pull_request]
permissions: {{}}
concurrency:
  group: ci-${{{{ github.ref }}}}
  cancel-in-progress: {cancel}
jobs:
  cd:
    uses: {uses}
    permissions:
      contents: read
{grants}"""


def repo(tmp_path: Path, ci: str, cd: str = CALLEE, readme: str = "DEPLOY_SSH_KEY") -> Path:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.yml").write_text(ci)
    (workflows / "cd.yml").write_text(cd)
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_this_repositorys_workflows_have_no_findings(repo_root: Path) -> None:
    assert workflow_checks.findings(repo_root) == []


@pytest.mark.parametrize("form", ["$/", "./"])  # GitHub's self-repository form, and the older
def test_a_caller_that_grants_what_its_callee_asks_for_passes(tmp_path: Path, form: str) -> None:
    grants = "      id-token: write\n"
    root = repo(tmp_path, caller(uses=f"{form}.github/workflows/cd.yml", grants=grants))
    assert workflow_checks.findings(root) == []
    assert workflow_checks.main([str(root)]) == 0


def test_a_called_job_asking_for_more_than_the_caller_grants_is_found(tmp_path: Path) -> None:
    root = repo(tmp_path, caller())
    assert workflow_checks.findings(root) == [
        "ci.yml: job cd grants id-token: none, but cd.yml's job images asks for id-token: "
        "write (GitHub refuses the run)"
    ]
    assert workflow_checks.main([str(root)]) == 1


@pytest.mark.parametrize(
    ("uses", "finding"),
    [
        (".github/workflows/cd.yml", "a workflow of this repository is called as"),
        ("$/.github/workflows/gone.yml", "calls $/.github/workflows/gone.yml, which does not"),
    ],
)
def test_a_call_github_cannot_resolve_is_found(tmp_path: Path, uses: str, finding: str) -> None:
    found = workflow_checks.findings(repo(tmp_path, caller(uses=uses)))
    assert len(found) == 1
    assert finding in found[0]


@pytest.mark.parametrize(
    ("cancel", "cancels_a_push"),
    [
        ("true", True),
        ("false", False),
        ("${{ github.event_name == 'pull_request' }}", False),
        ("${{ github.event_name != 'pull_request' }}", True),
        ("${{ github.event_name == 'push' }}", True),
        ("${{ startsWith(github.ref, 'refs/pull') }}", True),  # unread: the worst is assumed
    ],
)
def test_a_push_that_delivers_is_never_cancelled(
    tmp_path: Path, cancel: str, cancels_a_push: bool
) -> None:
    root = repo(tmp_path, caller(grants="      id-token: write\n", cancel=cancel))
    found = workflow_checks.findings(root)
    assert bool(found) == cancels_a_push
    assert all("a later push cancels this run" in line for line in found)


def test_every_secret_and_variable_is_documented_twice(tmp_path: Path) -> None:
    callee = CALLEE.replace("${{ secrets.GITHUB_TOKEN }}", "${{ vars.MLFLOW_TRACKING_URI }}")
    root = repo(tmp_path, caller(grants="      id-token: write\n"), cd=callee, readme="nothing")
    assert workflow_checks.findings(root) == [
        "cd.yml: DEPLOY_SSH_KEY is used but not in the README",
        "cd.yml: MLFLOW_TRACKING_URI is used but not in its header comment",
        "cd.yml: MLFLOW_TRACKING_URI is used but not in the README",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, {}),
        (None, {}),
        ({"contents": "read", "packages": "write"}, {"contents": 1, "packages": 2}),
    ],
)
def test_permissions_read_as_levels(value: object, expected: dict[str, int]) -> None:
    assert workflow_checks.permissions(value) == expected


def test_read_all_and_write_all_grant_every_scope() -> None:
    assert set(workflow_checks.permissions("write-all").values()) == {2}
    assert workflow_checks.permissions("read-all")["id-token"] == 1
    with pytest.raises(ValueError, match="not understood"):
        workflow_checks.permissions("everything")


def test_a_jobs_permissions_fall_back_to_its_workflows(tmp_path: Path) -> None:
    path = tmp_path / "w.yml"
    path.write_text("permissions: read-all\njobs:\n  a: {}\n  b: {permissions: {}}\n")
    workflow = Workflow.read(path)
    assert workflow_checks.granted(workflow.jobs["a"], workflow)["contents"] == 1
    assert workflow_checks.granted(workflow.jobs["b"], workflow) == {}
