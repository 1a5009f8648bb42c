"""Run the CI workflow's jobs on this machine as GitHub's runners run them.

    python -m imdb_deploy.ci_local --user runner [--session NAME ...] [--set NAME=VALUE ...]

GitHub runs each job of `.github/workflows/ci.yml` on a fresh machine, as a non-root user with
passwordless sudo, from a fresh checkout. This does the same here, job by job, in the order of
their `needs`: as the given user, in a new clone of the repository's committed HEAD, with the
workflow's, job's and step's environment (expressions evaluated), `CI=true`, `GITHUB_OUTPUT`
and `GITHUB_STEP_SUMMARY` files. The actions the workflow uses become their local equivalents:

    actions/checkout               a clone of the committed HEAD into the job's workspace
    actions/setup-python           /opt/hostedtoolcache/Python/<version>*/x64/bin on PATH
                                   (where GitHub's tool cache keeps them; --tool-cache elsewhere)
    astral-sh/setup-uv             the pinned uv installed into the user's home, on PATH
    actions/upload-artifact        the files copied into the run's artifact store
    actions/download-artifact      copied back (by name or pattern, merged)

`--set NAME=VALUE` overrides a variable for every step, for what this machine cannot do that
GitHub's can (reach Docker Hub or the OSV service): each override is printed. The exit status
is 0 when every job passed. Must run as root (it clones as, and runs steps as, `--user`).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imdb_deploy import github_expressions as expressions
from imdb_deploy.bluegreen.config import Redactor

WORKFLOW = Path(".github/workflows/ci.yml")
TOOL_CACHE = Path("/opt/hostedtoolcache/Python")
# After the tools the actions add: the system part of an Ubuntu runner's PATH (sbin included).
RUNNER_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
# This machine's network settings (proxies, CA bundles) reach the steps, as a runner's own do.
NETWORK_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
)  # fmt: skip


class WorkflowError(RuntimeError):
    """The workflow uses something this runner does not emulate, or a job cannot start."""


@dataclass(frozen=True)
class Delivery:
    """What a delivering run has that CI's does not (the CD rehearsal gives it): GitHub's
    environments, their secrets and required reviewers, and the repository's variables.

    Secrets live in files, one per secret, as GitHub keeps them per environment:
    `SECRETS/environments/<environment>/<NAME>` and `SECRETS/repository/<NAME>` (GITHUB_TOKEN's
    stand-in); a file others may read is refused, as a leaked secret would be. `approve(job,
    environment)` answers for the reviewers of an environment that requires them.
    """

    secrets: Path
    reviewed: frozenset[str] = frozenset()
    approve: Callable[[str, str], bool] = lambda job, environment: False
    variables: Mapping[str, str] = field(default_factory=dict)

    def secrets_of(self, environment: str | None) -> dict[str, str]:
        """The repository's secrets, and the environment's over them."""
        found: dict[str, str] = {}
        folders = [self.secrets / "repository"]
        if environment:
            folders.append(self.secrets / "environments" / environment)
        for folder in folders:
            for path in sorted(folder.glob("*")) if folder.is_dir() else []:
                if path.stat().st_mode & 0o077:
                    raise WorkflowError(f"secret {path} is readable by others: chmod 600 it")
                found[path.name] = path.read_text().rstrip("\n")
        return found


def environment_of(job: Mapping[str, Any], context: Context) -> str | None:
    """A job's `environment:`, a name or a table with one, rendered."""
    given = job.get("environment")
    name = given.get("name") if isinstance(given, Mapping) else given
    return None if name is None else str(context.render(name))


@dataclass
class Context:
    """What expressions can see: env, matrix, the finished jobs' outputs and results, and the
    parts of `github` emulated here (imdb_deploy.github_expressions evaluates them)."""

    env: dict[str, str] = field(default_factory=dict)
    matrix: dict[str, str] = field(default_factory=dict)
    needs: dict[str, dict[str, Any]] = field(default_factory=dict)
    github: dict[str, str] = field(
        default_factory=lambda: {"workflow": "ci", "ref": "refs/heads/main", "event_name": "push"}
    )
    secrets: dict[str, str] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)

    def contexts(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "matrix": self.matrix,
            "needs": self.needs,
            "github": expressions.Known(self.github),
            "secrets": self.secrets,
            "vars": self.vars,
        }

    def value(self, expression: str) -> Any:
        """The value of one `${{ }}` expression."""
        try:
            return expressions.evaluate(expression, self.contexts())
        except expressions.ExpressionError as error:
            raise WorkflowError(str(error)) from error

    def condition(self, expression: str, status: expressions.Status) -> bool:
        """An `if:` (with GitHub's implied success() when it names no status function)."""
        try:
            return expressions.condition(expression, self.contexts(), status)
        except expressions.ExpressionError as error:
            raise WorkflowError(str(error)) from error

    def render(self, text: Any) -> Any:
        """A value with its expressions replaced (a whole-string expression keeps its type)."""
        try:
            return expressions.render(text, self.contexts())
        except expressions.ExpressionError as error:
            raise WorkflowError(str(error)) from error


def job_order(jobs: Mapping[str, Any]) -> list[str]:
    """The jobs in an order that respects `needs`."""
    done: list[str] = []
    waiting = dict(jobs)
    while waiting:
        ready = [name for name, job in waiting.items() if all(need in done for need in _needs(job))]
        if not ready:
            raise WorkflowError(f"jobs whose needs never finish: {sorted(waiting)}")
        for name in ready:
            done.append(name)
            del waiting[name]
    return done


def _needs(job: Mapping[str, Any]) -> list[str]:
    needs = job.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


@dataclass
class Runner:
    """Runs jobs as `user` under `root` (workspaces, home, artifacts)."""

    repo: Path
    user: str
    root: Path
    overrides: dict[str, str]
    tool_cache: Path = TOOL_CACHE
    echo: Callable[[str], None] = print
    # Other repositories a job checks out (`repository:`), by `owner/name`: a local copy each.
    mirrors: Mapping[str, Path] = field(default_factory=dict)
    artifacts: Path = field(init=False)
    source: Path = field(init=False)

    def __post_init__(self) -> None:
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        # What jobs check out: the committed HEAD, in a copy the runner's user may read.
        self.source = self.root / "source.git"
        if not self.source.exists():
            clone = ["git", "clone", "--quiet", "--bare", "--no-local", str(self.repo)]
            subprocess.run([*clone, str(self.source)], check=True)  # noqa: S603
            self.give(self.source)

    def user_argv(self, command: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """`command` as the runner's user with exactly `env`."""
        sudo = ["sudo", "--user", self.user, "--set-home", "--", "env", "-i"]
        return [*sudo, *(f"{name}={value}" for name, value in env.items()), *command]

    def as_user(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        redact: Callable[[str], str] | None = None,
    ) -> int:
        """Run `command` as the runner's user with exactly `env`; its exit status. With
        `redact`, its output passes through it line by line (secrets masked, as GitHub does)."""
        argv = self.user_argv(command, env)
        if redact is None:
            return subprocess.call(argv, cwd=cwd)  # noqa: S603
        with subprocess.Popen(  # noqa: S603
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace",
        ) as process:  # fmt: skip
            for line in process.stdout or ():
                self.echo(redact(line.rstrip("\n")))
            return process.wait()

    def give(self, path: Path) -> bool:
        """Make `path` (and what is below it) the runner's user's."""
        chown = ["chown", "-R", self.user, str(path)]
        return subprocess.run(chown, check=False).returncode == 0  # noqa: S603

    def home(self) -> Path:
        return Path(f"~{self.user}").expanduser()

    def run_job(self, name: str, job: Mapping[str, Any], context: Context) -> dict[str, Any]:
        """Every step of one job (one matrix entry); its result and outputs."""
        # One path for every job, as on GitHub (coverage data from several jobs names the
        # same files), emptied in between as a new runner would be.
        workspace = self.root / "work" / self.repo.name
        self.end_leftovers(workspace)
        shutil.rmtree(workspace, ignore_errors=True)
        workspace.mkdir(parents=True)
        safe = re.sub(r"[^\w.-]+", "-", name)  # "cd / plan": a called workflow's job
        scratch = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=self.root))
        output, summary = scratch / "output", scratch / "summary"
        for path in (workspace, scratch, output, summary):
            path.touch()
            if not self.give(path):
                raise WorkflowError(f"cannot give {path} to {self.user}")
        paths: list[str] = []
        base = {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
            "HOME": str(self.home()),
            "LANG": "C.UTF-8",
            "RUNNER_TEMP": str(self.root),
            "USER": self.user,
            **{name: os.environ[name] for name in NETWORK_VARIABLES if name in os.environ},
        }
        failed = False
        for index, step in enumerate(job.get("steps", []), start=1):
            label = context.render(
                step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
            )
            condition = step.get("if")
            status = expressions.Status(failed=failed)
            runs = context.condition(condition, status) if condition else not failed
            if not runs:
                self.echo(f"  [{name}] skipped: {label}")
                continue
            env = {**base, **context.env}
            given = (step.get("env") or {}).items()
            env.update({k: expressions.text(context.render(v)) for k, v in given})
            env.update(self.overrides)
            env["PATH"] = os.pathsep.join([*paths, *RUNNER_PATH])
            started = time.monotonic()
            if "uses" in step:
                ok = self.action(step, context, workspace, paths, env)
            else:
                script = str(context.render(step["run"]))
                command = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]
                redact = masker(context.secrets) if context.secrets else None
                ok = self.as_user(command, env, workspace, redact) == 0
            seconds = time.monotonic() - started
            self.echo(f"  [{name}] {'ok' if ok else 'FAILED'} ({seconds:.0f} s) {index}: {label}")
            failed = failed or not ok
        self.end_leftovers(workspace)  # what the job left running goes with its machine
        outputs = {key: _step_output(v, output) for key, v in (job.get("outputs") or {}).items()}
        return {"result": "failure" if failed else "success", "outputs": outputs}

    def end_leftovers(self, workspace: Path) -> None:
        """End, by PID, the processes a job left running in its workspace (a registry, an
        engine): GitHub discards the runner, here the next job gets the same path."""
        for pid in processes_in(workspace):
            with contextlib.suppress(ProcessLookupError):
                self.echo(f"    ending {pid}, left running in {workspace}")
                os.kill(pid, signal.SIGKILL)

    def action(
        self,
        step: Mapping[str, Any],
        context: Context,
        workspace: Path,
        paths: list[str],
        env: Mapping[str, str],
    ) -> bool:
        """The local equivalent of one `uses:` step."""
        action = str(step["uses"]).split("@", 1)[0]
        given = {k: context.render(v) for k, v in (step.get("with") or {}).items()}
        emulated = {
            "actions/checkout": self.checkout,
            "actions/setup-python": self.setup_python,
            "astral-sh/setup-uv": self.setup_uv,
            "actions/upload-artifact": self.upload,
            "actions/download-artifact": self.download,
        }
        if action not in emulated:
            raise WorkflowError(f"action not emulated here: {action}")
        return emulated[action](given, workspace, paths, env)

    def checkout(
        self, given: Mapping[str, Any], workspace: Path, paths: list[str], env: Mapping[str, str]
    ) -> bool:
        """This repository at the commit into the workspace; another one (`repository:`, into
        `path:`) from its local mirror, which must be given (GitHub's network is not ours)."""
        other = given.get("repository")
        if other:
            mirror = self.mirrors.get(str(other))
            if mirror is None:
                raise WorkflowError(f"checkout of {other} not emulated: pass --mirror {other}=DIR")
            target = workspace / str(given.get("path") or other)
            shutil.copytree(mirror, target, symlinks=True)
            self.echo(f"    {other}: copied from {mirror} (its local mirror)")
            return self.give(target)
        clone = ["git", "clone", "--quiet", "--no-local", str(self.source), str(workspace)]
        return self.as_user(clone, env, self.root) == 0

    def setup_python(
        self, given: Mapping[str, Any], workspace: Path, paths: list[str], env: Mapping[str, str]
    ) -> bool:
        for version in str(given["python-version"]).split():
            found = sorted(self.tool_cache.glob(f"{version}*/x64/bin"))
            if not found:
                raise WorkflowError(f"no Python {version} in {self.tool_cache}")
            paths.insert(0, str(found[-1]))
        return True

    def setup_uv(
        self, given: Mapping[str, Any], workspace: Path, paths: list[str], env: Mapping[str, str]
    ) -> bool:
        venv = self.home() / f".ci-local/uv-{given['version']}"
        if not (venv / "bin" / "uv").exists():
            python = shutil.which("python3", path=os.pathsep.join(paths)) or "python3"
            make = [python, "-m", "venv", str(venv)]
            install = [str(venv / "bin/pip"), "install", "-q", f"uv=={given['version']}"]
            if self.as_user(make, env, self.root) or self.as_user(install, env, self.root):
                return False
        paths.insert(0, str(venv / "bin"))
        return True

    def upload(
        self, given: Mapping[str, Any], workspace: Path, paths: list[str], env: Mapping[str, str]
    ) -> bool:
        # As GitHub keeps them: a directory's contents, or the one file by its name.
        source = workspace / str(given["path"])
        if not source.exists():
            return bool(given.get("if-no-files-found") == "ignore")
        target = self.artifacts / str(given["name"])
        shutil.rmtree(target, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.mkdir(parents=True)
            shutil.copy2(source, target / source.name)
        return True

    def download(
        self, given: Mapping[str, Any], workspace: Path, paths: list[str], env: Mapping[str, str]
    ) -> bool:
        pattern = str(given.get("pattern") or given.get("name"))
        destination = workspace / str(given["path"])
        names = [p.name for p in self.artifacts.iterdir() if fnmatch.fnmatch(p.name, pattern)]
        if not names:
            self.echo(f"    no artifact matches {pattern}")
            return False
        for artifact in names:
            shutil.copytree(self.artifacts / artifact, destination, dirs_exist_ok=True)
        return self.give(destination)


def masker(secrets: Mapping[str, str]) -> Callable[[str], str]:
    """Masks each secret's value, and each line of a multi-line one, as GitHub's logs do."""
    pieces = {piece for value in secrets.values() for piece in [value, *value.splitlines()]}
    return Redactor(piece.strip() for piece in pieces)


def processes_in(directory: Path, proc: Path = Path("/proc")) -> list[int]:
    """PIDs of the processes whose working directory or command line is inside `directory`."""
    found = []
    inside = str(directory.resolve())
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = str((entry / "cwd").readlink())
            if (
                cwd == inside
                or cwd.startswith(inside + "/")
                or any(word.startswith(inside) for word in words)
            ):
                found.append(int(entry.name))
    return found


def _step_output(value: str, output: Path) -> str:
    """A job output `${{ steps.ID.outputs.NAME }}`: the NAME line the steps wrote."""
    match = re.fullmatch(r"\$\{\{\s*steps\.[\w-]+\.outputs\.(\w+)\s*\}\}", value.strip())
    if match is None:
        raise WorkflowError(f"job output not emulated here: {value}")
    for line in output.read_text().splitlines():
        key, _, found = line.partition("=")
        if key == match.group(1):
            return found
    return ""


def run_workflow(
    runner: Runner,
    workflow: Mapping[str, Any],
    sessions: set[str] | None = None,
    *,
    github: Mapping[str, str] | None = None,
    delivery: Delivery | None = None,
    prefix: str = "",
) -> dict[str, dict[str, Any]]:
    """Every job in `needs` order, each matrix entry on its own; the jobs' results.

    A job that calls a workflow of this repository (`uses: $/...`) is delivery: skipped
    unless `delivery` is given, which then runs the called workflow's jobs too, with GitHub's
    environments (their secrets, and their reviewers' approval before the job starts)."""
    jobs = workflow["jobs"]
    results: dict[str, dict[str, Any]] = {}
    github_context = dict(github or Context().github)
    for name in job_order(jobs):
        job, shown = jobs[name], f"{prefix}{name}"
        context = Context(
            env={k: str(v) for k, v in {**workflow.get("env", {}), **job.get("env", {})}.items()},
            needs={need: results[need] for need in _needs(job)},
            github=github_context,
            vars=dict(delivery.variables) if delivery else {},
        )
        results_of_needs = {r["result"] for r in context.needs.values()}
        status = expressions.Status(
            failed="failure" in results_of_needs, skipped="skipped" in results_of_needs
        )
        needs_passed = status.succeeded
        runs = context.condition(job["if"], status) if "if" in job else needs_passed
        if not runs:
            results[name] = {"result": "skipped", "outputs": {}}
            why = "its condition is false" if "if" in job else "a job it needs did not pass"
            runner.echo(f"job {shown}: skipped ({why})")
            continue
        if "uses" in job:
            results[name] = call_workflow(runner, shown, job, github_context, delivery)
            continue
        environment = environment_of(job, context)
        if environment is not None:
            if delivery is None:
                raise WorkflowError(f"job {shown} deploys to {environment}: not CI's to run")
            if environment in delivery.reviewed and not delivery.approve(shown, environment):
                results[name] = {"result": "failure", "outputs": {}}
                runner.echo(f"job {shown}: rejected (environment {environment} needs approval)")
                continue
            if environment in delivery.reviewed:
                runner.echo(f"job {shown}: approved for environment {environment}")
        context.secrets = delivery.secrets_of(environment) if delivery else {}
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        entries: list[dict[str, str]] = [{}]
        for key, values in matrix.items():
            listed = context.render(values)
            entries = [{**entry, key: item} for entry in entries for item in listed]
        ran = []
        for entry in entries:
            if sessions is not None and entry.get("session") not in (sessions | {None}):
                runner.echo(f"{shown} {entry}: not asked for, skipped")
                continue
            context.matrix = entry
            runner.echo(f"job {shown} {json.dumps(entry) if entry else ''}".rstrip())
            ran.append(runner.run_job(shown, job, context))
        failed = [r for r in ran if r["result"] != "success"]
        results[name] = {
            "result": "failure" if failed else "success",
            "outputs": ran[0]["outputs"] if ran else {},
        }
        runner.echo(f"job {shown}: {results[name]['result']}")
    return results


def call_workflow(
    runner: Runner,
    shown: str,
    job: Mapping[str, Any],
    github: Mapping[str, str],
    delivery: Delivery | None,
) -> dict[str, Any]:
    """A job that calls a workflow of this repository: its jobs, when delivering."""
    uses = str(job["uses"])
    if delivery is None:
        # CD after green CI deploys with GitHub's environments and secrets: not a CI job.
        runner.echo(f"job {shown}: skipped (calls {uses}: delivery, not CI)")
        return {"result": "skipped", "outputs": {}}
    if not re.fullmatch(r"[$.]/\.github/workflows/[\w.-]+\.ya?ml", uses):
        raise WorkflowError(f"job {shown} calls {uses}: only this repository's workflows")
    called = yaml.safe_load((runner.repo / uses[2:]).read_text())
    runner.echo(f"job {shown}: calls {uses}")
    inner = run_workflow(runner, called, github=github, delivery=delivery, prefix=f"{shown} / ")
    failed = any(result["result"] == "failure" for result in inner.values())
    return {"result": "failure" if failed else "success", "outputs": {}, "jobs": inner}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.ci_local", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--user", required=True, help="the non-root user with passwordless sudo")
    parser.add_argument("--session", action="append", help="only these matrix sessions")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--mirror", action="append", default=[], metavar="OWNER/NAME=DIR",
        help="a local copy of another repository a job checks out",
    )  # fmt: skip
    parser.add_argument("--tool-cache", type=Path, default=TOOL_CACHE)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: jobs run as --user, workspaces are made and cleaned as root")
    overrides = dict(item.split("=", 1) for item in args.set)
    for name, value in overrides.items():
        print(f"override for this machine: {name}={value}")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ci-local-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    mirrors = {name: Path(path) for name, path in (item.split("=", 1) for item in args.mirror)}
    runner = Runner(
        args.repo.resolve(), args.user, root, overrides, args.tool_cache, mirrors=mirrors
    )
    workflow = yaml.safe_load((args.repo / WORKFLOW).read_text())
    started = time.monotonic()
    try:
        results = run_workflow(runner, workflow, set(args.session) if args.session else None)
    except WorkflowError as error:
        print(f"ci-local: {error}", file=sys.stderr)
        return 2
    print(f"\nworkflow {WORKFLOW} in {time.monotonic() - started:.0f} s (work in {root}):")
    for name, result in results.items():
        print(f"  {name}: {result['result']}")
    return 0 if all(r["result"] == "success" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
