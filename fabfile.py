"""Fabric tasks for deploys, run from the repository root: `fab --list`.

    fab setup    --env E                      prepare the hosts (safe to repeat)
    fab deploy   --env E [--version V] [--digest D] [--approve]
    fab promote  --env E [--approve] [--digest D]  the release that passed E's promote_from
    fab rollback --env E [--version V] [--approve]
    fab status   --env E [--json]
    fab audit    --env E [--limit N] [--verify]
    fab unlock   --env E [--reason TEXT]

The tasks are thin: the same code runs behind `nox -s deploy`, `nox -s rollback` and these
(imdb_deploy.bluegreen.cli). E is a file name in deploy/environments (default: sandbox-staging).
"""

from __future__ import annotations

from fabric import task
from invoke.context import Context
from invoke.exceptions import Exit

from imdb_deploy.bluegreen import cli

DEFAULT_ENV = "sandbox-staging"


def _run(action: str, env: str, **options: object) -> None:
    code = cli.main([action, *cli.option_args(options), env])
    if code != 0:
        raise Exit(code=code)


@task(help={"env": "environment name", "version": "release tag (default: the last built)",
            "digest": "image digest (default: the one its build recorded)",
            "approve": cli.APPROVE_HELP, "hosts": cli.HOSTS_HELP,
            "partial": cli.PARTIAL_HELP})  # fmt: skip
def deploy(
    c: Context, env: str = DEFAULT_ENV, version: str = "", digest: str = "",
    approve: bool = False, hosts: str = "", partial: bool = False,
) -> None:  # fmt: skip
    """Blue-green deploy of a release, by digest, to every host of an environment."""
    _run("deploy", env, version=version, digest=digest, approve=approve, hosts=hosts,
         partial=partial)  # fmt: skip


@task(help={"env": "environment name (it names the one it promotes from)",
            "approve": cli.APPROVE_HELP,
            "digest": "the digest planned: refuse any other"})  # fmt: skip
def promote(
    c: Context, env: str = "sandbox-production", approve: bool = False, digest: str = ""
) -> None:
    """Deploy exactly the release live and benchmark-passed on the environment E promotes from
    (with --digest: only if it is that digest, the one CD's plan chose)."""
    _run("promote", env, approve=approve, digest=digest)


@task(help={"env": "environment name", "version": "release to return to (default: previous)",
            "approve": cli.APPROVE_HELP, "hosts": cli.HOSTS_HELP,
            "partial": cli.PARTIAL_HELP})  # fmt: skip
def rollback(
    c: Context, env: str = DEFAULT_ENV, version: str = "", approve: bool = False,
    hosts: str = "", partial: bool = False,
) -> None:  # fmt: skip
    """Back to the previous release (a proxy switch when it is kept), or to a given version."""
    _run("rollback", env, version=version, approve=approve, hosts=hosts, partial=partial)


@task(help={"env": "environment name", "json": "machine-readable output"})
def status(c: Context, env: str = DEFAULT_ENV, json: bool = False) -> None:
    """Per host: addresses, live colour, version and health."""
    _run("status", env, json=json)


@task(
    help={
        "env": "environment name",
        "limit": "how many entries",
        "verify": "check each host's chain of entries instead (exit 1 where it breaks)",
    }
)
def audit(c: Context, env: str = DEFAULT_ENV, limit: int = 20, verify: bool = False) -> None:
    """The newest entries of the environment's audit log, or with --verify its chain."""
    _run("audit", env, limit=limit, verify=verify)


@task(help={"env": "environment name", "reason": "why (goes into the audit log)"})
def unlock(c: Context, env: str = DEFAULT_ENV, reason: str = "") -> None:
    """Force-release the deploy lock of a deploy that is gone."""
    _run("unlock", env, reason=reason)


@task(help={"env": "environment name",
            "fingerprint": "expected SHA256 fingerprint(s), comma-separated, from the hosts "
            "themselves; without: confirm each key shown, in a terminal"})  # fmt: skip
def trust(c: Context, env: str = DEFAULT_ENV, fingerprint: str = "") -> None:
    """Show each host's SSH key fingerprints and pin the confirmed ones (changed keys refused)."""
    expected = [f"--fingerprint={item.strip()}" for item in fingerprint.split(",") if item.strip()]
    code = cli.main(["trust", *expected, env])
    if code != 0:
        raise Exit(code=code)


@task(help={"env": "environment name"})
def setup(c: Context, env: str = DEFAULT_ENV) -> None:
    """Prepare the hosts from bare (as [setup] user: root or a passwordless-sudo admin): engine,
    nginx, the deploy user and its sudoers file, directories, the restore unit (safe to run
    again; audited)."""
    _run("setup", env)
