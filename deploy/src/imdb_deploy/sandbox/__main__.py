"""`python -m imdb_deploy.sandbox up|down|status [--json] | reboot HOST`: the sandbox fleet of
this checkout.

The fleet's hosts are those of the sandbox environments in deploy/environments (`sandbox = true`).
`up` starts the registry and one sshd per host, then prepares every host over SSH with the
deploy's own `setup` (nginx, directories, the policy that requires the sandbox's release
signing key, made here once under .state/signing), exactly as on real hosts, and starts Prometheus
(127.0.0.1:9090, scraping every sandbox host) and a Pushgateway (127.0.0.1:9091, deploy markers).
`down` stops everything (machine hosts are powered off, their disks kept). `reboot HOST` reboots
a machine host and says how long until it served its live release again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Protocol

from imdb_deploy.bluegreen import cli as deploy_cli
from imdb_deploy.bluegreen.config import REPO_ROOT, ConfigError, Environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.engine import local, registry
from imdb_deploy.engine.processes import wait_until
from imdb_deploy.monitoring.stack import MonitoringError, MonitoringStack
from imdb_deploy.sandbox.fleet import Fleet, SandboxError, SandboxHost
from imdb_deploy.sandbox.inventory import fleet_of, sandbox_environments
from imdb_deploy.supply_chain import signing

STATE_DIR = REPO_ROOT / ".state" / "sandbox"
MONITORING_STATE = REPO_ROOT / ".state" / "monitoring"
SIGNING_STATE = REPO_ROOT / signing.SANDBOX_STATE
REBOOT_SERVING_TIMEOUT_S = 120


def up(environments: Sequence[Environment], fleet: Fleet) -> int:
    address = registry.LocalRegistry(local.state_dir() / "registry", fleet.registry).start()
    print(f"registry: {address}")
    signer = signing.sandbox_signer(SIGNING_STATE)
    print(f"release signing key: {signer.fingerprint} ({SIGNING_STATE / 'sandbox.asc'})")
    fleet.up()
    for host in fleet.status():
        print(f"sshd: {host['name']} on {host['ssh']}")
    for environment in environments:
        orchestrator = Orchestrator(environment)
        try:
            orchestrator.setup()
        except DeployError as exc:
            print(f"setup of {environment.name} FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            orchestrator.close()
    try:
        urls = MonitoringStack(MONITORING_STATE).up(environments)
        print(f"monitoring: Prometheus {urls['prometheus']}, Pushgateway {urls['pushgateway']}")
    except MonitoringError as exc:
        # Deploys do not need it; the operator's view of the sandbox does.
        print(f"monitoring NOT started: {exc}", file=sys.stderr)
    return status(environments, as_json=False)


def status(environments: Sequence[Environment], as_json: bool) -> int:
    rows: list[dict[str, object]] = []
    for environment in environments:
        orchestrator = Orchestrator(environment)
        try:
            rows += [{"environment": environment.name, **row} for row in orchestrator.status()]
        finally:
            orchestrator.close()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for environment in environments:
            print(f"\n{environment.name}")
            mine = [row for row in rows if row["environment"] == environment.name]
            print(deploy_cli.status_table(mine))
    return 0 if all(row.get("reachable") for row in rows) else 3


class Rebooting(Protocol):
    """What `reboot` needs of a fleet (a Fleet; a stand-in in its tests)."""

    @property
    def hosts(self) -> tuple[SandboxHost, ...]: ...

    def host(self, name: str) -> SandboxHost: ...

    def reboot(self, host: SandboxHost, timeout: float = ...) -> float: ...


def reboot(environments: Sequence[Environment], fleet: Rebooting, name: str) -> int:
    """Reboot one machine host; report when its sshd and then its live release answer."""
    found = [(env, host) for env in environments for host in env.hosts if host.name == name]
    if not found:
        print(f"error: no sandbox host {name!r}; hosts: {[h.name for h in fleet.hosts]}")
        return 2
    environment, host = found[0]
    url = f"http://{environment.http_address(host)}/ready"
    was_serving = _answers(url)
    started = time.monotonic()
    try:
        ssh_s = fleet.reboot(fleet.host(name))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: rebooted; sshd answered after {ssh_s:.1f} s")
    if not was_serving:
        print(f"{name}: served no release before the reboot: nothing to wait for")
        return 0
    if not wait_until(lambda: _answers(url), REBOOT_SERVING_TIMEOUT_S, 0.2):
        print(f"{name}: {url} did not answer 200 within {REBOOT_SERVING_TIMEOUT_S} s of boot")
        return 1
    print(f"{name}: serving again ({url}) {time.monotonic() - started:.1f} s after the reboot")
    return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 # nosec B310
            return bool(reply.status == 200)
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imdb_deploy.sandbox", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status", "reboot"])
    parser.add_argument("host", nargs="?", help="reboot: the machine host to reboot")
    parser.add_argument("--json", action="store_true", help="status as JSON, for scripts")
    args = parser.parse_args(argv)
    try:
        environments = sandbox_environments()
        fleet = fleet_of(environments, STATE_DIR)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "up":
        return up(environments, fleet)
    if args.action == "down":
        for line in [*fleet.down(), *MonitoringStack(MONITORING_STATE).down()]:
            print(f"stopped: {line}")
        return 0
    if args.action == "reboot":
        if not args.host:
            parser.error("reboot needs the host's name")
        return reboot(environments, fleet, args.host)
    return status(environments, args.json)


if __name__ == "__main__":
    sys.exit(main())
