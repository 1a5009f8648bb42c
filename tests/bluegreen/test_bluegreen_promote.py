"""Promotion's rules as pure functions: what may reach an environment that promotes from another,
and what a live API says it is. The whole flow runs against real hosts in tests/sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imdb_deploy.bluegreen import cli, commands
from imdb_deploy.bluegreen.config import REPO_ROOT, ConfigError, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import (
    Outcome,
    passed_release,
    promotable_release,
    served_release,
)
from imdb_deploy.bluegreen.state import HostState
from imdb_deploy.images import metadata

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def live(version: str | None, digest: str | None, passed: bool = True) -> HostState:
    if version is None:
        return HostState()
    state = HostState().switched("blue", version, digest)
    return state.gate_passed(version, "2026-12-03T10:00:00+00:00") if passed else state


def test_the_release_live_and_passed_everywhere_is_promotable() -> None:
    staging = load_environment("sandbox-staging")
    states = {"s1": live("r1", D1), "s2": live("r1", D1)}
    assert promotable_release(staging, states) == ("r1", D1)


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ({"s1": live("r1", D1), "s2": live("r2", D2)}, "does not run one release"),
        ({"s1": live("r1", D1), "s2": live("r1", D2)}, "does not run one release"),
        ({"s1": live(None, None), "s2": live(None, None)}, "runs no release to promote"),
        ({"s1": live("r1", D1), "s2": live(None, None)}, "does not run one release"),
        ({"s1": live("r1", None), "s2": live("r1", None)}, "runs r1 without a recorded digest"),
        ({"s1": live("r1", D1), "s2": live("r1", D1, passed=False)}, "has not passed"),
    ],
)
def test_what_is_not_promotable_is_refused_with_the_reason(
    states: dict[str, HostState], message: str
) -> None:
    with pytest.raises(DeployError, match=message):
        promotable_release(load_environment("sandbox-staging"), states)


def test_a_release_rebuilt_under_the_same_tag_must_pass_again() -> None:
    states = {"s1": live("r1", D1), "s2": live("r1", D1)}
    passed_release("staging", states, "r1", D1)
    with pytest.raises(DeployError, match="rebuilt image must pass staging again"):
        passed_release("staging", states, "r1", D2)
    with pytest.raises(
        DeployError, match=r"has not passed staging's benchmark gate on \['s1', 's2'\]"
    ):
        passed_release("staging", states, "r2", D2)


def test_served_release_reads_model_info() -> None:
    info = {"version": "m1", "release": {
        "release": "m1-t0123", "commit": "c", "tree": "t", "model": {
            "version": "m1", "manifest_sha256": "d"}}}  # fmt: skip
    assert served_release(json.dumps(info)) == {
        "served_release": "m1-t0123", "commit": "c", "tree": "t", "model_version": "m1",
        "model_manifest_sha256": "d",
    }  # fmt: skip
    for answer in ("", "not json", json.dumps({"version": "m1"}), json.dumps({"release": None})):
        assert served_release(answer) == {}


def test_environments_name_where_they_promote_from() -> None:
    production = load_environment("production")
    assert production.promote_from == "staging"
    assert production.sibling("staging").name == "staging"
    sandbox = load_environment("sandbox-production")
    assert sandbox.sibling(str(sandbox.promote_from)).name == "sandbox-staging"
    assert load_environment("staging").promote_from is None


def test_the_sibling_is_read_from_the_same_directory(tmp_path: Path) -> None:
    body = '[ssh]\nknown_hosts = "/k"\n[[hosts]]\nname = "h1"\naddress = "192.0.2.1"\n'
    (tmp_path / "prod.toml").write_text(f'image = "r/x"\npromote_from = "stage"\n{body}')
    (tmp_path / "stage.toml").write_text(f'image = "r/x"\n{body}')
    prod = load_environment(str(tmp_path / "prod.toml"))
    assert prod.sibling("stage").name == "stage"
    with pytest.raises(ConfigError, match="no environment 'nowhere'"):
        prod.sibling("nowhere")
    (tmp_path / "bad.toml").write_text(f'image = "r/x"\npromote_from = "../etc"\n{body}')
    with pytest.raises(ConfigError, match="promote_from"):
        load_environment(str(tmp_path / "bad.toml"))


def test_hosts_run_a_release_by_digest() -> None:
    env = load_environment("sandbox-staging")
    assert env.image_ref("r1") == "127.0.0.1:5000/mlops-imdb-api:r1"
    assert env.image_ref("r1", D1) == f"127.0.0.1:5000/mlops-imdb-api@{D1}"
    host = env.hosts[0]
    run = commands.run_container(env, host, "blue", "r1", env.layout(host), digest=D1)
    assert run.endswith(f"127.0.0.1:5000/mlops-imdb-api@{D1}")
    assert "--label=io.mlops-imdb.version=r1" in run or "version=r1" in run


class _Planner:
    """Stands in for the orchestrator: what `promotable` would say."""

    def __init__(self, answer: tuple[str, str] | Exception) -> None:
        self.answer = answer

    def promotable(self, source: str) -> tuple[str, str]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "build", "reason"),
    [
        (DeployError("staging runs no release to promote"), "true", "runs no release"),
        (("m1-t000000000000", D1), "true", "not of tree"),
        ("this tree", "false", "it is of this tree"),
    ],
)
def test_cd_plans_to_promote_only_a_release_of_its_own_tree(
    answer: object, build: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = metadata.git_revision(REPO_ROOT).tree
    if answer == "this tree":
        answer = (f"m1-t{tree[:12]}", D1)
    assert cli._plan_promotion(_Planner(answer), "staging") == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    # What the production job then promotes, and nothing else.
    planned = f"release=m1-t{tree[:12]}\ndigest={D1}\n" if build == "false" else ""
    assert out == f"build={build}\n{planned}"
    assert reason in err


def test_the_planned_digest_is_promoted_or_the_promotion_refuses() -> None:
    staging = load_environment("sandbox-staging")
    states = {"s1": live("r1", D1), "s2": live("r1", D1)}
    assert promotable_release(staging, states, planned=D1) == ("r1", D1)
    # A develop release reached staging between main's plan and its approval.
    newer = {"s1": live("r2", D2), "s2": live("r2", D2)}
    with pytest.raises(DeployError, match=r"not the planned sha256:111111111111.*Nothing promoted"):
        promotable_release(staging, newer, planned=D1)


@pytest.mark.parametrize("value", ["sha256:" + "a" * 63, "sha256:" + "A" * 64, "a" * 71, ""])
def test_a_digest_on_the_command_line_is_a_digest(value: str) -> None:
    with pytest.raises(SystemExit):
        cli.main(["promote", "production", "--digest", value])


def test_a_deploy_in_github_actions_names_its_release_and_digest(tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    outcome = Outcome("d", "deploy", "staging", "u", "t", {}, "r1", D1, result="ok")
    cli.job_outputs(outcome, {"GITHUB_OUTPUT": str(output)})
    assert output.read_text() == f"release=r1\ndigest={D1}\n"
    cli.job_outputs(outcome, {})  # outside GitHub Actions: nothing written anywhere


def test_every_environment_a_release_reaches_trusts_the_key_cd_signs_with() -> None:
    """CD signs each release once (SIGNING_KEY); staging and production must both trust that
    key, or production refuses at pull what staging verified (stop 22's files named two)."""
    staging, production = load_environment("staging"), load_environment("production")
    assert production.promote_from == "staging"
    assert staging.signing is not None
    assert production.signing is not None
    assert staging.signing.public_key == production.signing.public_key
    assert staging.signing.public_key.name == "release-signing.asc"
