"""Docker Engine hosts: the same deploys, rollbacks and faults on hosts whose engine is a real
Docker Engine (Debian's docker.io, one daemon per host on its own socket): deploy and rollback
under load, releases that are unsigned, signed by another key, carry a moved signature or never
get ready, a crashed container, a private registry without and with the login.

Docker has no signature policy of its own: setup gives each host the release key as a gpgv
keyring, and the deploy verifies the release's signature on the host before the pull
(`commands.verify_signature`). The image is then pulled by that digest, which Docker checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.errors import DeployError
from tests.sandbox.conftest import (
    Releases,
    Sandbox,
    crash_one_and_wait,
    deploy_and_roll_back_under_load,
    docker_hosts,
    fleet_of_kind,
    private_registry_case,
    set_up,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dockers(
    releases: Releases,
    tmp_path_factory: pytest.TempPathFactory,
    require_tool: Callable[[str], str],
) -> Iterator[Sandbox]:
    """Two light hosts, each with a Docker Engine of its own (deploy/system-packages.sh installs
    docker.io)."""
    for tool in ("dockerd", "docker", "gpgv"):
        require_tool(tool)
    with fleet_of_kind(
        releases, tmp_path_factory.mktemp("docker-fleet"), "docker", docker_hosts()
    ) as box:
        yield box


@pytest.fixture(scope="module")
def ready(dockers: Sandbox) -> dict[str, list[str]]:
    return set_up(dockers)


def test_setup_gives_docker_hosts_the_release_keyring_and_repeats_as_nothing(
    dockers: Sandbox, ready: dict[str, list[str]]
) -> None:
    for changed in ready.values():
        assert "release keyring" in changed, changed
        assert "policy.json" not in changed  # Podman's policy means nothing to Docker
    assert set_up(dockers) == {host.name: [] for host in dockers.environment.hosts}
    engines = {
        dockers.orchestrator().runners[host.name].run("docker version --format '{{.Server.Os}}'")
        .stdout.strip()
        for host in dockers.environment.hosts
    }  # fmt: skip
    assert engines == {"linux"}


def test_deploy_and_rollback_on_docker_hosts_drop_no_request(
    dockers: Sandbox, ready: dict[str, list[str]], tmp_path: Path
) -> None:
    deploy_and_roll_back_under_load(dockers, tmp_path, "docker hosts")
    assert any("signature verified (gpgv)" in line for line in dockers.lines)


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        # Docker checks no signatures: the deploy's gpgv check refuses these before the pull.
        ("unsigned", "no signature of sha256:"),
        ("foreign", "no signature of sha256:"),
        ("moved", "no signature of sha256:"),
        ("never_ready", "not ready within"),
    ],
)
def test_a_broken_release_leaves_the_previous_one_serving_on_docker_hosts(
    dockers: Sandbox, ready: dict[str, list[str]], role: str, reason: str
) -> None:
    live, _ = dockers.live_and_other()
    deployer = dockers.orchestrator()
    try:
        broken = getattr(dockers.releases, role)
        with pytest.raises(DeployError, match=reason):
            deployer.deploy(broken)
        image = dockers.environment.image_ref(broken, deployer.digests.get(broken))
        for host in dockers.environment.hosts:
            runner = deployer.runners[host.name]
            running = runner.run("docker ps --format '{{.Names}}'").stdout.split()
            assert len(running) == 1, running
            assert not runner.run(commands.image_exists(image, "docker"), check=False).ok
    finally:
        deployer.close()
    dockers.assert_settled(live, "failed")


def test_a_crashed_container_is_restarted_by_docker_while_the_other_host_serves(
    dockers: Sandbox, ready: dict[str, list[str]]
) -> None:
    live, _ = dockers.live_and_other()
    back, answered = crash_one_and_wait(dockers)
    print(f"docker crash: serving again after {back:.1f} s; the other host answered {answered}")
    assert dockers.served_versions() == [live, live]


def test_a_private_registry_is_refused_without_the_login_and_pulled_with_it_on_docker_hosts(
    dockers: Sandbox, ready: dict[str, list[str]], tmp_path: Path
) -> None:
    """Docker reads the same login file, as `config.json` of its `--config` directory."""
    private_registry_case(dockers, tmp_path)
