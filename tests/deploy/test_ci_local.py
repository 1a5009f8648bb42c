"""The CI workflow run locally as GitHub's runners run it (imdb_deploy.ci_local)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from imdb_deploy.ci_local import (
    Context,
    Delivery,
    Runner,
    WorkflowError,
    job_order,
    main,
    processes_in,
    run_workflow,
)

# A small workflow of the same shape as ci.yml: a job lists the sessions, a matrix runs each
# (one fails), artifacts go from the matrix to a later job, and `ok` runs whatever happened.
WORKFLOW = """
env:
  GREETING: hello
  ROOT_SESSIONS: '["two"]'
jobs:
  list:
    outputs:
      sessions: ${{ steps.list.outputs.sessions }}
    steps:
      - uses: actions/checkout@0000000000000000000000000000000000000000
      - id: list
        run: echo 'sessions=["one", "two", "bad"]' >> "$GITHUB_OUTPUT"
  session:
    needs: list
    strategy:
      matrix:
        session: ${{ fromJSON(needs.list.outputs.sessions) }}
    steps:
      - uses: actions/checkout@0000000000000000000000000000000000000000
      - env:
          SESSION: ${{ matrix.session }}
          AS_ROOT: ${{ contains(fromJSON(env.ROOT_SESSIONS), matrix.session) }}
        run: |
          test "$CI" = true
          mkdir -p reports
          echo "$GREETING $SESSION root=$AS_ROOT" > "reports/$SESSION.txt"
          test "$SESSION" != bad
      - uses: actions/upload-artifact@0000000000000000000000000000000000000000
        if: always()
        with:
          name: reports-${{ matrix.session }}
          path: reports/
  after:
    needs: session
    steps:
      - run: echo never
  ok:
    if: always()
    needs: [list, session, after]
    steps:
      - uses: actions/checkout@0000000000000000000000000000000000000000
      - uses: actions/download-artifact@0000000000000000000000000000000000000000
        with:
          pattern: reports-*
          path: reports/
      - env:
          RESULTS: ${{ join(needs.*.result, ' ') }}
        run: |
          cat reports/*.txt > all.txt
          echo "$RESULTS" > results.txt
      - uses: actions/upload-artifact@0000000000000000000000000000000000000000
        with:
          name: all
          path: all.txt
"""


class SameUserRunner(Runner):
    """Runs the steps as this test's own user: what differs from GitHub is only sudo."""

    def user_argv(self, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]

    def give(self, path: Path) -> bool:
        return True

    def home(self) -> Path:
        return self.root / "home"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "ci.yml").write_text(WORKFLOW)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "ci"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True
        )
    return repo


def test_the_jobs_run_in_order_with_matrix_outputs_and_artifacts(
    repo: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, echo=lines.append)
    results = run_workflow(runner, yaml.safe_load(WORKFLOW))
    assert {name: r["result"] for name, r in results.items()} == {
        "list": "success",
        "session": "failure",
        "after": "skipped",
        "ok": "success",
    }
    stored = runner.artifacts
    assert (stored / "all" / "all.txt").read_text().splitlines() == [
        "hello bad root=false",
        "hello one root=false",
        "hello two root=true",
    ]
    assert any("FAILED" in line and "[session]" in line for line in lines)
    assert any("skipped (a job it needs did not pass)" in line for line in lines)


def test_a_called_workflow_is_delivery_and_is_not_run_here(repo: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    workflow = yaml.safe_load(WORKFLOW)
    workflow["jobs"]["cd"] = {
        "needs": "ok", "if": "github.event_name == 'push'", "uses": "./.github/workflows/cd.yml"
    }  # fmt: skip
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, echo=lines.append)
    assert run_workflow(runner, workflow, sessions={"one"})["cd"]["result"] == "skipped"
    assert "job cd: skipped (calls ./.github/workflows/cd.yml: delivery, not CI)" in lines


def test_only_the_sessions_asked_for_run(repo: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    runner = SameUserRunner(repo, "me", tmp_path / "run", {"GREETING": "hi"}, echo=lines.append)
    results = run_workflow(runner, yaml.safe_load(WORKFLOW), sessions={"one"})
    assert results["session"]["result"] == "success"
    assert (runner.artifacts / "reports-one" / "one.txt").read_text() == "hi one root=false\n"
    assert not (runner.artifacts / "reports-two").exists()


def test_expressions_this_runner_does_not_know_are_refused() -> None:
    context = Context(env={"A": "1"}, matrix={"session": "x"})
    assert context.render("${{ env.A }}-${{ matrix.session }}") == "1-x"
    with pytest.raises(WorkflowError, match="not emulated here"):
        context.value("github.event.pull_request.title")


def test_jobs_whose_needs_never_finish_are_refused() -> None:
    jobs: dict[str, Any] = {"a": {"needs": "b"}, "b": {"needs": ["a"]}}
    with pytest.raises(WorkflowError, match="never finish"):
        job_order(jobs)


def test_an_action_it_does_not_emulate_is_refused(repo: Path, tmp_path: Path) -> None:
    workflow = {"jobs": {"x": {"steps": [{"uses": "docker/login-action@v3"}]}}}
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, echo=lambda line: None)
    with pytest.raises(WorkflowError, match="action not emulated here: docker/login-action"):
        run_workflow(runner, workflow)


def test_the_command_needs_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SystemExit):
        main(["--user", "runner"])
    assert "run as root" in capsys.readouterr().err


def test_processes_left_in_a_workspace_are_found_by_cwd_or_command_line(tmp_path: Path) -> None:
    workspace = tmp_path / "work" / "repo"
    workspace.mkdir(parents=True)
    proc = tmp_path / "proc"
    for pid, cwd, argv in (
        ("101", workspace / "sub", ["podman", "system", "service"]),
        ("102", tmp_path, ["docker-registry", "serve", f"{workspace}/.state/registry.yml"]),
        ("103", tmp_path, ["sleep", "1"]),
        ("self", tmp_path, ["bash"]),
    ):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
        cwd.mkdir(exist_ok=True)
        (proc / pid / "cwd").symlink_to(cwd)
    assert sorted(processes_in(workspace, proc)) == [101, 102]


# Jobs that set up Python and uv: the tool cache and an installed uv are laid out beforehand.
SETUP = """
jobs:
  tools:
    steps:
      - uses: actions/setup-python@0000000000000000000000000000000000000000
        with:
          python-version: |
            3.42
      - uses: astral-sh/setup-uv@0000000000000000000000000000000000000000
        with:
          version: 9.9.9
      - run: python3.42 --version && uv --version
"""


def test_setup_python_and_uv_put_their_tools_on_path(repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "toolcache"
    tools = {cache / "3.42.1" / "x64" / "bin" / "python3.42": "Python 3.42.1"}
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, cache, echo=lambda line: None)
    tools[runner.home() / ".ci-local" / "uv-9.9.9" / "bin" / "uv"] = "uv 9.9.9"
    for path, answer in tools.items():
        path.parent.mkdir(parents=True)
        path.write_text(f"#!/bin/sh\necho '{answer}'\n")
        path.chmod(0o755)
    assert run_workflow(runner, yaml.safe_load(SETUP))["tools"]["result"] == "success"
    missing = SameUserRunner(repo, "me", tmp_path / "run2", {}, tmp_path / "none")
    with pytest.raises(WorkflowError, match=r"no Python 3\.42 in"):
        run_workflow(missing, yaml.safe_load(SETUP))


def test_main_runs_the_repository_workflow_and_says_how_each_job_ended(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("imdb_deploy.ci_local.Runner", SameUserRunner)
    argv = ["--user", "me", f"--repo={repo}", f"--workdir={tmp_path / 'run'}", "--set", "A=b"]
    assert main([*argv, "--session", "one"]) == 0
    out = capsys.readouterr().out
    assert "override for this machine: A=b" in out
    assert "  ok: success" in out
    assert main(argv) == 1  # the session `bad` fails
    (repo / ".github" / "workflows" / "ci.yml").write_text("jobs: {x: {steps: [{uses: a/b@v}]}}")
    # An identity of its own: a fresh machine has no git user to commit as.
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(repo), *identity, "commit", "-qam", "x"], check=True)
    assert main([*argv[:4], f"--workdir={tmp_path / 'run3'}"]) == 2
    assert "action not emulated here: a/b" in capsys.readouterr().err


# ---- delivery: a called workflow with GitHub's environments, secrets and reviewers ----------

CALLER = """
jobs:
  ok:
    steps:
      - run: "true"
  cd:
    needs: ok
    if: github.event_name == 'push'
    uses: $/.github/workflows/cd.yml
"""
CALLED = """
on:
  workflow_call:
jobs:
  plan:
    if: github.ref == 'refs/heads/main'
    environment: staging
    outputs:
      digest: ${{ steps.plan.outputs.digest }}
    steps:
      - id: plan
        env:
          KEY: ${{ secrets.DEPLOY_KEY }}
        run: |
          echo "the key is $KEY"
          echo "digest=sha256:ab" >> "$GITHUB_OUTPUT"
  staging:
    needs: plan
    if: ${{ !cancelled() && !failure() }}
    environment: staging
    steps:
      - env:
          TOKEN: ${{ secrets.GITHUB_TOKEN }}
        run: test "$TOKEN" = token-value
  production:
    needs: [plan, staging]
    if: ${{ !cancelled() && !failure() && github.ref == 'refs/heads/main' }}
    environment: production
    steps:
      - env:
          DIGEST: ${{ needs.plan.outputs.digest }}
          KEY: ${{ secrets.DEPLOY_KEY }}
        run: echo "promote $DIGEST with $KEY"
"""


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    root = tmp_path / "secrets"
    for folder, name, value in (
        ("repository", "GITHUB_TOKEN", "token-value"),
        ("environments/staging", "DEPLOY_KEY", "staging-key\nsecond-line"),
        ("environments/production", "DEPLOY_KEY", "production-key"),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(value)
        (root / folder / name).chmod(0o600)
    return root


def deliver(
    repo: Path, tmp_path: Path, delivery: Delivery, ref: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    (repo / ".github" / "workflows" / "cd.yml").write_text(CALLED)
    lines: list[str] = []
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, echo=lines.append)
    github = {"workflow": "ci", "ref": ref, "event_name": "push"}
    results = run_workflow(runner, yaml.safe_load(CALLER), github=github, delivery=delivery)
    return results, lines


def test_a_delivering_run_calls_the_workflow_with_each_environments_secrets(
    repo: Path, tmp_path: Path, secrets: Path
) -> None:
    asked: list[tuple[str, str]] = []

    def approve(job: str, environment: str) -> bool:
        asked.append((job, environment))
        return True

    delivery = Delivery(secrets, frozenset({"production"}), approve)
    results, lines = deliver(repo, tmp_path, delivery, "refs/heads/main")
    called = results["cd"]["jobs"]
    assert {name: r["result"] for name, r in called.items()} == {
        "plan": "success", "staging": "success", "production": "success",
    }  # fmt: skip
    assert asked == [("cd / production", "production")]
    assert "job cd / production: approved for environment production" in lines
    # Secrets are masked in what steps print, each line of a multi-line one too.
    assert "the key is ***" in lines
    assert "***" in lines  # `second-line`, printed on a line of its own
    assert "promote sha256:ab with ***" in lines
    assert not any("staging-key" in line or "production-key" in line for line in lines)


def test_a_rejected_approval_fails_that_job_and_develop_skips_main_only_jobs(
    repo: Path, tmp_path: Path, secrets: Path
) -> None:
    delivery = Delivery(secrets, frozenset({"production"}))  # nobody approves
    results, lines = deliver(repo, tmp_path, delivery, "refs/heads/main")
    assert results["cd"]["jobs"]["production"]["result"] == "failure"
    assert results["cd"]["result"] == "failure"
    assert "job cd / production: rejected (environment production needs approval)" in lines

    results, _ = deliver(repo, tmp_path, delivery, "refs/heads/develop")
    called = results["cd"]["jobs"]
    assert (called["plan"]["result"], called["staging"]["result"]) == ("skipped", "success")
    assert called["production"]["result"] == "skipped"


def test_a_secret_others_may_read_is_refused(repo: Path, tmp_path: Path, secrets: Path) -> None:
    (secrets / "environments" / "staging" / "DEPLOY_KEY").chmod(0o644)
    with pytest.raises(WorkflowError, match="readable by others"):
        deliver(repo, tmp_path, Delivery(secrets), "refs/heads/main")


def test_an_environment_outside_delivery_and_a_foreign_call_are_refused(
    repo: Path, tmp_path: Path, secrets: Path
) -> None:
    runner = SameUserRunner(repo, "me", tmp_path / "run", {}, echo=lambda line: None)
    deploying = {"jobs": {"deploy": {"environment": "staging", "steps": [{"run": "true"}]}}}
    with pytest.raises(WorkflowError, match="deploys to staging: not CI's to run"):
        run_workflow(runner, deploying)
    foreign = {"jobs": {"cd": {"uses": "other/repo/.github/workflows/cd.yml@v1"}}}
    with pytest.raises(WorkflowError, match="only this repository's workflows"):
        run_workflow(runner, foreign, delivery=Delivery(secrets))


def test_another_repository_is_checked_out_from_its_local_mirror(
    repo: Path, tmp_path: Path
) -> None:
    mirror = tmp_path / "advisories"
    (mirror / "vulns").mkdir(parents=True)
    (mirror / "vulns" / "PYSEC-1.yaml").write_text("id: PYSEC-1\n")
    step = {
        "uses": "actions/checkout@0000000000000000000000000000000000000000",
        "with": {"repository": "pypa/advisory-database", "path": "advisory-database"},
    }
    workflow = {
        "jobs": {"a": {"steps": [step, {"run": "test -f advisory-database/vulns/PYSEC-1.yaml"}]}}
    }
    lines: list[str] = []
    runner = SameUserRunner(
        repo, "me", tmp_path / "run", {}, echo=lines.append,
        mirrors={"pypa/advisory-database": mirror},
    )  # fmt: skip
    assert run_workflow(runner, workflow)["a"]["result"] == "success"
    assert any("copied from" in line for line in lines)
    bare = SameUserRunner(repo, "me", tmp_path / "run2", {}, echo=lines.append)
    with pytest.raises(WorkflowError, match="pass --mirror pypa/advisory-database=DIR"):
        run_workflow(bare, workflow)
