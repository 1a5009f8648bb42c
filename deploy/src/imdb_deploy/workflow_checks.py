"""Static checks of the GitHub workflows, for what no run here can show.

GitHub refuses a workflow run, or runs it differently than it reads, in ways a local emulation
cannot reproduce. These rules read `.github/workflows/*.yml` as GitHub does and fail on each:

- a called workflow of this repository (`uses: $/.github/workflows/X.yml`, GitHub's
  self-repository form, or the older `./.github/...`) must exist;
- a called workflow's jobs may ask for no more permissions than the calling job grants: GitHub
  refuses the whole run otherwise ("The nested job is requesting 'id-token: write', but is only
  allowed 'none'");
- a run that delivers (calls a workflow with deploy jobs) can never be cancelled by a later push:
  its caller's `cancel-in-progress` is false for pushes (the called workflow's own setting cannot
  override the caller's);
- every secret and variable a workflow uses is documented in its header comment and in the
  README (GitHub gives an unset secret as an empty string, silently).

`python -m imdb_deploy.workflow_checks [DIR]` prints the findings; the unit test
tests/deploy/test_workflow_checks.py runs them on the repository's workflows.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WORKFLOWS = Path(".github/workflows")
LEVELS = {"none": 0, "read": 1, "write": 2}
# Every permission GitHub knows: `read-all`/`write-all` grant each of them.
SCOPES = (
    "actions", "attestations", "checks", "contents", "deployments", "discussions", "id-token",
    "issues", "models", "packages", "pages", "pull-requests", "repository-projects",
    "security-events", "statuses",
)  # fmt: skip
LOCAL_CALL = re.compile(r"[$.]/\.github/workflows/[\w.-]+\.ya?ml")
SECRET_OR_VARIABLE = re.compile(r"\$\{\{[^}]*\b(secrets|vars)\.([A-Za-z_][A-Za-z0-9_]*)")
# Secrets GitHub provides itself: nothing to document.
PROVIDED = {"GITHUB_TOKEN"}


@dataclass(frozen=True)
class Workflow:
    path: Path
    text: str
    data: dict[Any, Any]

    @classmethod
    def read(cls, path: Path) -> Workflow:
        text = path.read_text(encoding="utf-8")
        return cls(path, text, yaml.safe_load(text) or {})

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return dict(self.data.get("jobs") or {})

    @property
    def header(self) -> str:
        """The comment lines before the first key."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith("#"):
                break
            lines.append(line)
        return "\n".join(lines)


def permissions(value: Any) -> dict[str, int]:
    """A `permissions:` value as scope -> level (absent scopes: none)."""
    if value is None or value == {}:
        return {}
    if value in ("read-all", "write-all"):
        level = LEVELS[str(value).removesuffix("-all")]
        return dict.fromkeys(SCOPES, level)
    if not isinstance(value, Mapping):
        raise ValueError(f"permissions not understood: {value!r}")
    return {str(scope): LEVELS[str(level)] for scope, level in value.items()}


def granted(job: Mapping[str, Any], workflow: Workflow) -> dict[str, int]:
    """What a job of `workflow` holds: its own `permissions`, else the workflow's."""
    return permissions(
        job["permissions"] if "permissions" in job else workflow.data.get("permissions")
    )


def called(job: Mapping[str, Any]) -> str | None:
    uses = job.get("uses")
    return str(uses) if isinstance(uses, str) else None


def call_findings(workflow: Workflow, root: Path) -> list[str]:
    """Calls of this repository's workflows: the path, and the permissions they may ask for."""
    findings = []
    for name, job in workflow.jobs.items():
        uses = called(job)
        if uses is None or "@" in uses:
            continue
        where = f"{workflow.path.name}: job {name}"
        if not LOCAL_CALL.fullmatch(uses):
            findings.append(
                f"{where} calls {uses!r}: a workflow of this repository is called as "
                "$/.github/workflows/NAME.yml"
            )
            continue
        target = root / uses[2:]
        if not target.is_file():
            findings.append(f"{where} calls {uses}, which does not exist")
            continue
        allowed = granted(job, workflow)
        callee = Workflow.read(target)
        for inner_name, inner in callee.jobs.items():
            for scope, level in granted(inner, callee).items():
                if level > allowed.get(scope, 0):
                    have = next(k for k, v in LEVELS.items() if v == allowed.get(scope, 0))
                    want = next(k for k, v in LEVELS.items() if v == level)
                    findings.append(
                        f"{where} grants {scope}: {have}, but {target.name}'s job {inner_name} "
                        f"asks for {scope}: {want} (GitHub refuses the run)"
                    )
    return findings


def cancel_on_push(workflow: Workflow) -> bool:
    """Whether a push's run of `workflow` can be cancelled by a later one."""
    concurrency = workflow.data.get("concurrency")
    if not isinstance(concurrency, Mapping):
        return False
    cancel = concurrency.get("cancel-in-progress", False)
    if isinstance(cancel, bool):
        return cancel
    expression = re.fullmatch(
        r"\$\{\{\s*github\.event_name\s*(==|!=)\s*'([\w-]+)'\s*\}\}", str(cancel).strip()
    )
    if expression is None:
        return True  # an expression this check cannot read: assume the worst
    equal = expression.group(2) == "push"
    return equal if expression.group(1) == "==" else not equal


def cancellation_findings(workflow: Workflow, root: Path) -> list[str]:
    """A run that calls a delivering workflow must not be cancellable by a later push."""
    delivers = [
        name
        for name, job in workflow.jobs.items()
        if (uses := called(job)) and LOCAL_CALL.fullmatch(uses) and (root / uses[2:]).is_file()
        and any("environment" in inner for inner in Workflow.read(root / uses[2:]).jobs.values())
    ]  # fmt: skip
    if delivers and cancel_on_push(workflow):
        return [
            f"{workflow.path.name}: a later push cancels this run, and with it the delivery its "
            f"job(s) {', '.join(delivers)} call, half-way (the called workflow's own "
            "cancel-in-progress cannot override its caller's): cancel only pull requests"
        ]
    return []


def used_names(workflow: Workflow) -> set[str]:
    return {name for _, name in SECRET_OR_VARIABLE.findall(workflow.text) if name not in PROVIDED}


def documentation_findings(workflow: Workflow, readme: str) -> list[str]:
    findings = []
    for name in sorted(used_names(workflow)):
        if not re.search(rf"\b{name}\b", workflow.header):
            findings.append(f"{workflow.path.name}: {name} is used but not in its header comment")
        if not re.search(rf"\b{name}\b", readme):
            findings.append(f"{workflow.path.name}: {name} is used but not in the README")
    return findings


def findings(root: Path) -> list[str]:
    readme = (root / "README.md").read_text(encoding="utf-8")
    found = []
    for path in sorted((root / WORKFLOWS).glob("*.y*ml")):
        workflow = Workflow.read(path)
        found += call_findings(workflow, root)
        found += cancellation_findings(workflow, root)
        found += documentation_findings(workflow, readme)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.workflow_checks")
    parser.add_argument("root", nargs="?", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    found = findings(args.root)
    print("\n".join(found) if found else "workflows: no findings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
