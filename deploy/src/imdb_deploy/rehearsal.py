"""The CD rehearsal's scenarios: which of ci.yml's and cd.yml's jobs GitHub runs for each event.

    python -m imdb_deploy.rehearsal --dry [SCENARIO ...]     (`nox -s rehearse -- --dry`)

Each scenario is an event (a push to develop or main, a pull request) with what its jobs would
report (the plan's `build` output, a reviewer's answer). `--dry` walks the real workflows' job
graph with GitHub's rules (imdb_deploy.ci_local: `needs`, `if` with the status functions,
`uses: $/...` into cd.yml, environments and their reviewers) and stands each job in for a
success with the given outputs: it prints which jobs run, which are skipped and why, and the
concurrency group a second push would queue behind. It checks the workflows' logic, not the
steps: those run in CI (`make ci`) and, against production-shaped machines, in the full
rehearsal (issue 25, still to come: this module says so rather than pretend).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imdb_deploy.ci_local import WORKFLOW, Context, Delivery, Runner, run_workflow

REPO_ROOT = Path(__file__).resolve().parents[3]
# GitHub's environments that require reviewers (Settings > Environments): production only.
REVIEWED = frozenset({"production"})


@dataclass(frozen=True)
class Scenario:
    """An event, and what the jobs that decide others' fate would say."""

    description: str
    event: str
    ref: str
    outputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    approved: bool = True

    def github(self) -> dict[str, str]:
        return {
            "workflow": "ci",
            "event_name": self.event,
            "ref": self.ref,
            "repository_owner": "mlops-imdb",
            "actor": "rehearsal",
        }


PLANNED = "sha256:" + "1" * 64
# What ci.yml's first job lists (`nox -l --json -t ci`), a few of them: the matrix it feeds.
CI_SESSIONS = '["lint", "tests-3.11", "integration", "images"]'

SCENARIOS: dict[str, Scenario] = {
    "develop": Scenario("a push to develop: train, images, staging", "push", "refs/heads/develop"),
    "main-promotes": Scenario(
        "a push to main whose tree staging already runs: promote that digest",
        "push",
        "refs/heads/main",
        {"plan": {"build": "false", "digest": PLANNED}},
    ),
    "main-fix": Scenario(
        "a fix made on main: build, staging, then promote what staging got",
        "push",
        "refs/heads/main",
        {"plan": {"build": "true", "digest": ""}, "staging": {"digest": PLANNED}},
    ),
    "main-rejected": Scenario(
        "a push to main that production's reviewers reject",
        "push",
        "refs/heads/main",
        {"plan": {"build": "false", "digest": PLANNED}},
        approved=False,
    ),
    "pull-request": Scenario("a pull request: CI only", "pull_request", "refs/pull/7/merge"),
}


class DryRunner(Runner):
    """Stands each job in for a success with the scenario's outputs; runs no step."""

    def __init__(
        self, repo: Path, outputs: Mapping[str, Mapping[str, str]], echo: Callable[[str], None]
    ) -> None:
        self.repo, self.user, self.root, self.overrides = repo, "runner", repo, {}
        self.echo = echo
        self.outputs = outputs
        self.ran: list[str] = []

    def run_job(self, name: str, job: Mapping[str, Any], context: Context) -> dict[str, Any]:
        self.ran.append(name)
        short = name.rsplit(" / ", 1)[-1]
        given = {"sessions": CI_SESSIONS} if short == "sessions" else {}
        given.update(self.outputs.get(short, {}))
        for key, value in (job.get("outputs") or {}).items():
            given.setdefault(str(key), "" if "steps." in str(value) else str(value))
        return {"result": "success", "outputs": given}


@dataclass
class Walk:
    """What a dry walk of one scenario found."""

    scenario: str
    ran: list[str]
    lines: list[str]
    results: dict[str, dict[str, Any]]
    concurrency: str


def walk(name: str, repo: Path = REPO_ROOT, secrets: Path | None = None) -> Walk:
    """The job graph GitHub would follow for scenario `name`."""
    scenario = SCENARIOS[name]
    lines: list[str] = []
    runner = DryRunner(repo, scenario.outputs, lines.append)
    workflow = yaml.safe_load((repo / WORKFLOW).read_text())
    delivery = Delivery(
        secrets or repo / ".state" / "rehearsal" / "no-secrets",
        REVIEWED,
        lambda job, environment: scenario.approved,
    )
    results = run_workflow(runner, workflow, github=scenario.github(), delivery=delivery)
    called = yaml.safe_load((repo / ".github" / "workflows" / "cd.yml").read_text())
    concurrency = "; ".join(
        queueing(path, data, scenario) for path, data in (("ci.yml", workflow), ("cd.yml", called))
    )
    return Walk(name, runner.ran, lines, results, concurrency)


def queueing(path: str, workflow: Mapping[str, Any], scenario: Scenario) -> str:
    """What a later run of the same group does to this one: cancel it, or wait for it."""
    settings = workflow.get("concurrency") or {}
    context = Context(github=scenario.github())
    group = context.render(settings.get("group", ""))
    cancel = context.render(settings.get("cancel-in-progress", False)) is True
    return f"{path} group {group}: a later run {'cancels' if cancel else 'waits for'} this one"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.rehearsal", description=__doc__)
    parser.add_argument("--dry", action="store_true", help="walk the job graph, run no step")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"no scenario {', '.join(unknown)} (there are: {', '.join(SCENARIOS)})")
    if not args.dry:
        print(
            "rehearsal: only --dry exists yet: the run against production-shaped machines is "
            "issue 25's next part",
            file=sys.stderr,
        )
        return 2
    for name in args.scenarios or list(SCENARIOS):
        found = walk(name)
        print(f"\n== {name}: {SCENARIOS[name].description}")
        print("\n".join(f"  {line}" for line in found.lines))
        print(f"  concurrency: {found.concurrency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
