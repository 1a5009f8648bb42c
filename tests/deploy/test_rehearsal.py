"""The job graph of ci.yml and cd.yml, walked as GitHub walks it, for each scenario of the CD
rehearsal: which jobs run, which are skipped, what a later push does to the run."""

from __future__ import annotations

import pytest

from imdb_deploy import rehearsal

CI_JOBS = ["sessions", "session", "coverage", "ci-ok"]


def ran(scenario: str) -> list[str]:
    return rehearsal.walk(scenario).ran


def test_a_push_to_develop_trains_builds_and_deploys_staging() -> None:
    assert ran("develop") == [*CI_JOBS[:1], *["session"] * 4, *CI_JOBS[2:], "cd / train",
                              "cd / images", "cd / staging"]  # fmt: skip


def test_main_promotes_what_staging_runs_without_building() -> None:
    walked = rehearsal.walk("main-promotes")
    assert walked.ran[-2:] == ["cd / plan", "cd / production"]
    assert "job cd / production: approved for environment production" in walked.lines
    assert "job cd / train: skipped (its condition is false)" in walked.lines


def test_a_fix_on_main_builds_deploys_staging_then_promotes() -> None:
    assert ran("main-fix")[-5:] == [
        "cd / plan", "cd / train", "cd / images", "cd / staging", "cd / production",
    ]  # fmt: skip


def test_what_the_reviewers_reject_is_not_promoted() -> None:
    walked = rehearsal.walk("main-rejected")
    assert "cd / production" not in walked.ran
    assert walked.results["cd"]["result"] == "failure"
    assert "job cd / production: rejected (environment production needs approval)" in walked.lines


def test_a_pull_request_runs_ci_only_and_a_later_commit_cancels_it() -> None:
    walked = rehearsal.walk("pull-request")
    assert not any(job.startswith("cd") for job in walked.ran)
    assert "job cd: skipped (its condition is false)" in walked.lines
    assert (
        "ci.yml group ci-ci-refs/pull/7/merge: a later run cancels this one" in walked.concurrency
    )


@pytest.mark.parametrize("scenario", ["develop", "main-promotes", "main-fix"])
def test_a_later_push_never_cancels_a_delivering_run(scenario: str) -> None:
    concurrency = rehearsal.walk(scenario).concurrency
    assert "cancels" not in concurrency
    assert "a later run waits for this one" in concurrency


def test_the_command_line_walks_the_scenarios_and_refuses_what_it_cannot_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rehearsal.main(["--dry", "develop"]) == 0
    assert "== develop: a push to develop" in capsys.readouterr().out
    assert rehearsal.main(["develop"]) == 2
    assert "only --dry exists yet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rehearsal.main(["--dry", "no-such-scenario"])
