"""The deploy commands, shared by `python -m imdb_deploy.bluegreen` (nox) and the fabfile.

deploy ENV [--version V] [--digest D] [--approve] [--hosts H1,H2 --partial]
                                          release V by digest (default: the release the last
                                          `nox -s images` built, reports/release.json)
promote ENV [--approve] [--digest D]      the release live and benchmark-passed on the
                                          environment ENV promotes from, by its digest (and
                                          only if it is D, the digest CD's plan chose)
promote ENV --plan                        `build=false` (and its release= and digest=) when
                                          that release is of this checkout's tree (promote
                                          it), else `build=true` (CD's choice)
rollback ENV [--version V] [--approve] [--hosts H1,H2 --partial]
                                          back to the kept release, or to V
--hosts H1,H2 --partial                   act on the named hosts only (the others are gone):
                                          audited as partial; the next full deploy brings the
                                          skipped hosts in line
status ENV [--json]                       per host: colour, release, digest, health
audit ENV [--limit N] [--verify]          the newest audit entries; --verify: where each
                                          host's chain of entries breaks, if it does
lock ENV                                  who holds the deploy lock, until when
unlock ENV [--reason TEXT]                force-release the lock (audited)
setup ENV                                 prepare the hosts (safe to repeat)
trust ENV [--fingerprint SHA256:...]      show each host's SSH key fingerprints; pin the new
                                          ones in known_hosts when they match, or when you
                                          confirm them in a terminal; refuse changed keys
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from imdb_deploy import notify
from imdb_deploy.bluegreen import hostkeys
from imdb_deploy.bluegreen.config import REPO_ROOT, ConfigError, Environment, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator, Outcome
from imdb_deploy.images import __main__ as images_cli
from imdb_deploy.images import metadata
from imdb_deploy.images import release as releases
from imdb_deploy.monitoring import markers
from imdb_deploy.report.timeline import timelines_dir

# `nox -s images --push` records the release it built here (its tag and image digests).
RELEASE_RECORD = REPO_ROOT / "reports" / "release.json"


# Outcome results as notifications name them (anything unexpected counts as a failure).
RESULTS: dict[str, notify.Result] = {
    "ok": "ok", "refused": "refused", "rolled_back": "rolled_back", "failed": "failed"
}  # fmt: skip
# As deploy markers name them: a refused deploy changed nothing, which for a marker is a failure.
MARKER_RESULTS: dict[str, markers.Result] = {"ok": "ok", "rolled_back": "rolled_back"}


class CliError(RuntimeError):
    """A usage problem worth one clear line, not a traceback."""


def built_release(record: Path = RELEASE_RECORD) -> tuple[str, str]:
    """(release, API image digest) of the release the last `nox -s images --push` built."""
    try:
        built = releases.read(record)
        return built.release, built.images["api"]["digest"]
    except (releases.ReleaseError, KeyError) as exc:
        raise CliError(
            f"no --version given and no release recorded in {record} ({exc}): "
            "build one with `nox -s images` or pass --version"
        ) from None


def target_release(
    version: str | None, digest: str | None, record: Path = RELEASE_RECORD
) -> tuple[str, str | None]:
    """What a deploy releases: the built release by default; `--version V` with the digest
    given, or the one its build recorded, or (None) what the hosts or registry know."""
    if not version:
        return built_release(record)
    if digest:
        return version, digest
    try:
        built, built_digest = built_release(record)
    except CliError:
        return version, None
    return version, built_digest if built == version else None


def save_outcome(outcome: Outcome, directory: Path | None = None) -> Path:
    """The deploy's timeline as JSON, for the deployment report."""
    directory = directory or timelines_dir()
    directory.mkdir(parents=True, exist_ok=True)
    stamp = outcome.started.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = directory / f"{outcome.environment}-{stamp}-{outcome.action}-{outcome.id}.json"
    data = {
        **outcome.audit_entry(),
        "events": [vars(event) for event in outcome.events],
        "benchmark": outcome.benchmark,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


APPROVE_HELP = (
    "approval for an environment that requires it (production): accepted in GitHub Actions "
    "from the environment's protected GitHub environment; elsewhere a person confirms. It "
    "guards against mistakes, not people: GITHUB_ACTIONS and MLOPS_GITHUB_ENVIRONMENT can be "
    "set by hand, so the real control is who holds the deploy and signing keys"
)


def status_table(rows: Sequence[dict[str, object]]) -> str:
    header = f"{'host':<14} {'ssh':<18} {'http':<26} {'colour':<7} {'release':<40} health"
    lines = [header, "-" * len(header)]
    for row in rows:
        health = (
            "ok" if row.get("healthy") else ("UNREACHABLE" if not row.get("reachable") else "DOWN")
        )
        if row.get("interrupted_switch"):
            health += " (interrupted switch: the next deploy or rollback repairs it)"
        lines.append(
            f"{row['host']!s:<14} {row['ssh']!s:<18} {row['http']!s:<26} "
            f"{row.get('colour') or '-'!s:<7} {row.get('version') or '-'!s:<40} {health}"
        )
        if row.get("digest") or row.get("commit"):
            # The digest a signed environment runs is a release's manifest list; its hosts'
            # engines required the key's signature on it (and on their platform's image).
            signed = f"signed by {row['signed_by']}" if row.get("signed_by") else "unsigned"
            lines.append(
                f"    digest {row.get('digest') or '-'}  commit {row.get('commit') or '-'}  "
                f"model {row.get('model_version') or '-'}  {signed}"
            )
        if row.get("error"):
            lines.append(f"    {row['error']}")
    return "\n".join(lines)


def announce(outcome: Outcome, report: Path, environ: Mapping[str, str]) -> None:
    """Tell Slack and e-mail (when configured) how it went; a failing receiver is only logged."""
    event = notify.DeployEvent(
        environment=outcome.environment,
        action="rollback" if outcome.action == "rollback" else "deploy",
        result=RESULTS.get(outcome.result, "failed"),
        from_versions=outcome.from_versions,
        to_version=outcome.to_version,
        user=outcome.user,
        seconds=outcome.seconds,
        detail=outcome.detail,
        report_path=str(report),
    )
    if not notify.announce(event, environ):
        return
    marker_settings = markers.MarkerSettings.from_environ(environ)
    if outcome.to_version and (marker_settings.pushgateway or marker_settings.grafana_url):
        marker = markers.DeployMarker(
            outcome.environment,
            outcome.to_version,
            MARKER_RESULTS.get(outcome.result, "failed"),
            "rollback" if outcome.action == "rollback" else "deploy",
        )
        print(f"deploy marker: {markers.record_deploy(marker, marker_settings).describe()}")


def _release(
    orchestrator: Orchestrator,
    action: str,
    options: Mapping[str, Any],
) -> int:
    version, approve = options.get("version"), bool(options.get("approve"))
    try:
        if action == "deploy":
            release, digest = target_release(version, options.get("digest"))
            force = bool(options.get("force"))
            outcome = orchestrator.deploy(release, approve, force=force, digest=digest)
        elif action == "promote":
            source = orchestrator.environment.promote_from
            if source is None:
                raise CliError(
                    f"{orchestrator.environment.name} names no environment to promote from "
                    "(promote_from in its file)"
                )
            if options.get("plan"):
                return _plan_promotion(orchestrator, source)
            outcome = orchestrator.promote(
                orchestrator.environment.sibling(source), approve, planned=options.get("digest")
            )
        else:
            outcome = orchestrator.rollback(version, approve)
    finally:
        if orchestrator.outcome is not None:
            report = save_outcome(orchestrator.outcome)
            print(f"timeline: {report}")
            announce(orchestrator.outcome, report, orchestrator.environ)
    if outcome.result == "ok":
        job_outputs(outcome, orchestrator.environ)
    return 0 if outcome.result == "ok" else 1


def job_outputs(outcome: Outcome, environ: Mapping[str, str]) -> None:
    """In GitHub Actions: the release and digest now live, as the step's outputs (CD's
    production job promotes exactly the digest its staging job deployed)."""
    output = environ.get("GITHUB_OUTPUT")
    if output and outcome.to_version and outcome.to_digest:
        with Path(output).open("a", encoding="utf-8") as file:
            file.write(f"release={outcome.to_version}\ndigest={outcome.to_digest}\n")


def _plan_promotion(orchestrator: Orchestrator, source: str) -> int:
    """Print `build=false` when `source` runs a promotable release of this checkout's tree,
    else `build=true` (for $GITHUB_OUTPUT); the reason goes to stderr."""
    tree = metadata.git_revision(REPO_ROOT).tree
    try:
        version, digest = orchestrator.promotable(source)
    except DeployError as exc:
        build, reason = True, f"build a release ({exc})"
    else:
        build = not releases.is_of_tree(version, tree)
        reason = (
            f"build a release ({source} runs {version}, not of tree {tree[:12]})"
            if build
            else f"promote {version} ({digest}) from {source}: it is of this tree"
        )
    print(f"plan: {reason}", file=sys.stderr)
    print(f"build={str(build).lower()}")
    if not build:  # the release the production job then promotes, and no other
        print(f"release={version}\ndigest={digest}")
    return 0


def _status(orchestrator: Orchestrator, as_json: bool) -> int:
    rows = orchestrator.status()
    print(json.dumps(rows, indent=2) if as_json else status_table(rows))
    return 0 if all(row.get("healthy") for row in rows) else 3


def _unlock(orchestrator: Orchestrator, reason: str) -> int:
    released = orchestrator.unlock(reason)
    print(f"released: {released}" if released else "no lock was held")
    return 0


def prune_timelines(environment: str, keep: int, directory: Path | None = None) -> list[Path]:
    """Keep the newest `keep` timelines of an environment in reports/deploys."""
    directory = directory or timelines_dir()
    timelines = sorted(directory.glob(f"{environment}-*.json"), key=lambda p: p.stat().st_mtime)
    doomed = timelines[: max(0, len(timelines) - keep)]
    for path in doomed:
        path.unlink()
    return doomed


def prune(environments: Sequence[Environment], keep: int) -> int:
    """Hosts first (they say what is live or kept anywhere), then the local images and registry
    with those versions protected, then old timelines."""
    protected: set[str] = set()
    for environment in environments:
        orchestrator = Orchestrator(environment)
        try:
            protected |= orchestrator.prune()
        finally:
            orchestrator.close()
        removed = prune_timelines(environment.name, keep * 4)
        print(f"{environment.name}: {len(removed)} old timeline(s) removed")
    print(f"protected (live or kept on a host): {sorted(protected) or 'none'}")
    args = ["prune", f"--keep={keep}", *(f"--protect={version}" for version in sorted(protected))]
    return images_cli.main(args)


def _lock(orchestrator: Orchestrator) -> int:
    print(json.dumps(orchestrator.lock_info()))
    return 0


def _setup(orchestrator: Orchestrator) -> int:
    orchestrator.setup()
    return 0


def _audit(orchestrator: Orchestrator, limit: int, verify: bool = False) -> int:
    if verify:
        found = orchestrator.verify_audit()
        for host, verdict in found.items():
            print(f"{host}: {verdict}")
        return 0 if all(v.endswith(" entries chain") for v in found.values()) else 1
    for entry in orchestrator.audit_log(limit):
        print(json.dumps(entry, sort_keys=True))
    return 0


HOSTS_HELP = (
    "act on these hosts only (comma-separated), when another host is gone for good; needs "
    "--partial. The default stays all-or-nothing on every host"
)
PARTIAL_HELP = (
    "confirm that --hosts leaves the environment's other hosts on what they run now "
    "(audited as partial; the next full deploy brings them in line)"
)


def narrowed(
    environment: Environment, hosts: str | None, partial: bool
) -> tuple[Environment, list[str]]:
    """The environment on `--hosts` alone and the hosts it skips; all of it without --hosts.
    CliError when --hosts lacks --partial (or the reverse): acting on part of an environment
    must be asked for in so many words."""
    if not hosts:
        if partial:
            raise CliError("--partial goes with --hosts H1,H2 (the hosts to act on)")
        return environment, []
    names = [name.strip() for name in hosts.split(",") if name.strip()]
    if not partial:
        raise CliError(
            f"--hosts {','.join(names)} leaves the other hosts of {environment.name} on what "
            "they run now: add --partial to confirm (audited as such)"
        )
    try:
        only = environment.only(names)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    kept = {host.name for host in only.hosts}
    return only, [host.name for host in environment.hosts if host.name not in kept]


def trust(environment: Environment, fingerprints: Sequence[str]) -> int:
    """`trust`: each host's verdict on a line (its fingerprints below); 1 if any was refused."""
    verdicts = hostkeys.trust(environment, expected=fingerprints)
    for verdict in verdicts:
        print(f"{verdict.host} ({verdict.name}): {verdict.result.splitlines()[0]}")
        for key in verdict.offered:
            print(f"    {key.kind} {key.fingerprint}")
    print(f"known_hosts: {environment.ssh.known_hosts}")
    return 1 if any(verdict.refused for verdict in verdicts) else 0


def run(action: str, environment: Environment, **options: Any) -> int:
    """Run one action; returns the process exit code."""
    environment, skipped = narrowed(environment, options.get("hosts"), bool(options.get("partial")))
    orchestrator = Orchestrator(environment, skipped=skipped)
    actions: dict[str, Callable[[], int]] = {
        "deploy": lambda: _release(orchestrator, "deploy", options),
        "promote": lambda: _release(orchestrator, "promote", options),
        "rollback": lambda: _release(orchestrator, "rollback", options),
        "status": lambda: _status(orchestrator, bool(options.get("json"))),
        "audit": lambda: _audit(
            orchestrator, int(options.get("limit") or 20), bool(options.get("verify"))
        ),
        "lock": lambda: _lock(orchestrator),
        "unlock": lambda: _unlock(orchestrator, str(options.get("reason") or "")),
        "setup": lambda: _setup(orchestrator),
    }  # fmt: skip
    if action not in actions:
        raise CliError(f"unknown action {action!r}")
    try:
        return actions[action]()
    except DeployError as exc:
        print(f"{action} FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        orchestrator.close()


def image_digest(value: str) -> str:
    """A digest as the registries and engines write it, nothing else (it reaches commands)."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError(f"not an image digest (sha256:<64 hex>): {value!r}")
    return value


def option_args(options: dict[str, object]) -> list[str]:
    """`{"version": "v1", "approve": True}` -> `["--version", "v1", "--approve"]`; unset: none."""
    args: list[str] = []
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif value not in (None, False, ""):
            args += [flag, str(value)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.bluegreen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for name in ("deploy", "rollback"):
        sub = actions.add_parser(name)
        sub.add_argument("--version", help="the release tag (<model version>-t<tree>)")
        sub.add_argument("--approve", action="store_true", help=APPROVE_HELP)
        sub.add_argument("--hosts", metavar="H1,H2", help=HOSTS_HELP)
        sub.add_argument("--partial", action="store_true", help=PARTIAL_HELP)
    promoting = actions.add_parser("promote")
    promoting.add_argument("--approve", action="store_true", help=APPROVE_HELP)
    promoting.add_argument(
        "--plan", action="store_true", help="say whether CD must build first (build=true|false)"
    )
    promoting.add_argument("--digest", type=image_digest, help="the digest planned: refuse another")
    actions.choices["deploy"].add_argument(
        "--force", action="store_true", help="redeploy even where the release is live already"
    )
    actions.choices["deploy"].add_argument(
        "--digest",
        type=image_digest,
        help="the image digest to run (default: the one its build recorded)",
    )
    actions.add_parser("status").add_argument("--json", action="store_true")
    auditing = actions.add_parser("audit")
    auditing.add_argument("--limit", type=int, default=20)
    auditing.add_argument(
        "--verify", action="store_true", help="check each host's chain of entries (exit 1: broken)"
    )
    actions.add_parser("lock")
    actions.add_parser("unlock").add_argument("--reason", default="")
    actions.add_parser("setup")
    actions.add_parser("trust").add_argument(
        "--fingerprint", action="append", default=[], metavar="SHA256:...",
        help="a host key fingerprint you have from the host itself (its console, its "
        "provider); repeat for several hosts. Without it, you confirm each key in a terminal",
    )  # fmt: skip
    for sub in actions.choices.values():
        sub.add_argument("environment", help="a name in deploy/environments, or a .toml path")
    pruning = actions.add_parser("prune")
    pruning.add_argument("environments", nargs="+", metavar="environment")
    pruning.add_argument("--keep", type=int, default=5, help="releases kept besides live/kept")
    args = parser.parse_args(argv)
    try:
        if args.action == "prune":
            return prune([load_environment(name) for name in args.environments], args.keep)
        environment = load_environment(args.environment)
        if args.action == "trust":
            return trust(environment, args.fingerprint)
        options = {k: v for k, v in vars(args).items() if k not in ("action", "environment")}
        return run(args.action, environment, **options)
    except (ConfigError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
