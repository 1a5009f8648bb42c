"""Which hosts make up the sandbox: those of the environments marked `sandbox = true`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imdb_deploy.bluegreen.config import (
    ENVIRONMENTS_DIR,
    ConfigError,
    Environment,
    available,
    load_environment,
)
from imdb_deploy.sandbox.fleet import Fleet, SandboxHost


def sandbox_environments(directory: Path = ENVIRONMENTS_DIR) -> list[Environment]:
    environments = [load_environment(name, directory) for name in available(directory)]
    return [environment for environment in environments if environment.sandbox]


def registry_address(environments: Sequence[Environment]) -> str:
    """The registry the sandbox environments pull from (host:port of their image)."""
    addresses = {environment.image.split("/", 1)[0] for environment in environments}
    if len(addresses) != 1:
        raise ConfigError(f"sandbox environments pull from several registries: {addresses}")
    return addresses.pop()


def fleet_of(
    environments: Sequence[Environment], state_dir: Path, registry: str | None = None
) -> Fleet:
    """The fleet that hosts these environments; `registry` overrides where hosts pull from."""
    hosts = tuple(
        SandboxHost(
            name=host.name,
            address=host.address,
            ssh_port=environment.ssh_port(host),
            deploy_root=environment.layout(host).root,
            kind=environment.sandbox_hosts,
            engine=environment.engine,
        )
        for environment in environments
        for host in environment.hosts
    )
    return Fleet(state_dir, hosts, registry or registry_address(environments))
