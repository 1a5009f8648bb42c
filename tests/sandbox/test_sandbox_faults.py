"""Deploys under the faults an operator gets paged for, for real on the test fleet:

- the deploy lock lost in the middle of a deploy (it stops before its next change and undoes);
- the registry down for a few seconds mid-deploy (retried and survived), and down for good
  (the deploy fails with nothing changed);
- a host whose container storage is too small (refused before the pull, with how much is free);
- one host gone for good (the healthy one deployed and rolled back with `--hosts --partial`,
  the gone one brought in line by the next full deploy).

Each case ends on one release per host, serving, with the lock free and an audit entry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imdb_deploy.bluegreen import cli, commands
from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.sandbox.fleet import Fleet
from imdb_deploy.sandbox.inventory import fleet_of
from tests.sandbox.conftest import (
    RegistryReplica,
    Sandbox,
    crash_one_and_wait,
    environment_toml,
    forget_release,
    private_registry_case,
    serving_through_replica,
    worker_index,
)
from tests.support import loopback

pytestmark = pytest.mark.integration


# ---- the lock ----------------------------------------------------------------------------------


def test_a_lock_lost_mid_deploy_stops_before_the_switch_and_undoes(sandbox: Sandbox) -> None:
    live, other = sandbox.live_and_other()
    first = sandbox.environment.hosts[0]
    expired: list[str] = []

    def expire_the_lock(host: str, step: str) -> None:
        # As if this host's renewals had failed for a whole TTL: its lock is past its expiry.
        if host == first.name and step == "ready" and not expired:
            Path(str(sandbox.environment.layout(first).lock_expires)).write_text("1\n")
            expired.append(step)

    deployer = sandbox.orchestrator(on_step=expire_the_lock)
    try:
        with pytest.raises(DeployError, match=r"lost the deploy lock before switching") as error:
            deployer.deploy(other)
        assert f"{first.name}: it expired" in str(error.value)
        assert "undid what it had changed" in str(error.value)
        # Nothing of the new release is left running anywhere: the live colour alone runs.
        for host in sandbox.environment.hosts:
            listing = deployer.runners[host.name].run(commands.list_containers(sandbox.environment))
            running = [c for c in json.loads(listing.stdout or "[]") if c["State"] == "running"]
            assert len(running) == 1, running
    finally:
        deployer.close()
    assert expired
    sandbox.assert_settled(live, "failed")


def test_a_deploy_that_lost_its_lock_after_the_switch_leaves_the_new_holders_colours(
    sandbox: Sandbox,
) -> None:
    """Paused past its lock's lifetime between the switch and the drain while a second deploy
    took the environment over (and put the first one's old release back live): the first one
    must not then stop "its" old colour, which is the second one's live colour now."""
    live, other = sandbox.live_and_other()
    took_over: list[str] = []

    def take_over(host: str, step: str) -> None:
        if host == "*" and step == "switched" and not took_over:
            for each in sandbox.environment.hosts:  # as if its renewals had failed for a TTL
                Path(str(sandbox.environment.layout(each).lock_expires)).write_text("1\n")
            second = sandbox.orchestrator()
            try:
                took_over.append(second.deploy(live).result)
            finally:
                second.close()

    first = sandbox.orchestrator(on_step=take_over)
    try:
        with pytest.raises(DeployError, match="lost the deploy lock before stopping") as error:
            first.deploy(other)
        assert f"{other} is live on every host; the old colour left running" in str(error.value)
        assert "undid" not in str(error.value)
    finally:
        first.close()
    assert took_over == ["ok"]
    # The second deploy's release serves on every host, its colour untouched by the first.
    assert sandbox.served_versions() == [live] * len(sandbox.environment.hosts)


# ---- the registry ------------------------------------------------------------------------------


@pytest.fixture
def replica(sandbox: Sandbox, tmp_path: Path) -> Iterator[RegistryReplica]:
    with serving_through_replica(sandbox, tmp_path) as registry:
        yield registry


def test_a_registry_down_for_seconds_mid_deploy_is_survived(
    sandbox: Sandbox, replica: RegistryReplica
) -> None:
    _, other = sandbox.live_and_other()
    forget_release(sandbox, other)
    back = threading.Timer(6.0, replica.start)
    once = threading.Lock()

    def take_the_registry_down(host: str, step: str) -> None:
        # Signatures fetched on one host: the registry goes away for 6 s, mid-deploy.
        if step == "signatures" and once.acquire(blocking=False):
            replica.stop()
            back.start()

    deployer = sandbox.orchestrator(on_step=take_the_registry_down)
    try:
        outcome = deployer.deploy(other)
    finally:
        deployer.close()
        if back.is_alive():
            back.join()
    assert back.finished.is_set(), "the registry never went down"
    assert outcome.result == "ok"
    retries = [event for event in outcome.events if event.step.endswith(" retry")]
    assert retries, "the outage was not noticed"
    assert all("connection refused" in event.detail for event in retries), retries
    sandbox.assert_settled(other, "ok")


def test_a_registry_down_for_good_fails_the_deploy_with_nothing_changed(
    sandbox: Sandbox, replica: RegistryReplica
) -> None:
    live, other = sandbox.live_and_other()
    forget_release(sandbox, other)
    replica.stop()
    deployer = sandbox.orchestrator()
    started = time.monotonic()
    try:
        with pytest.raises(DeployError, match="connection refused"):
            deployer.deploy(other)
        assert deployer.outcome is not None
        retries = [e for e in deployer.outcome.events if e.step.endswith(" retry")]
        # Every host tried its signature fetch `attempts` times before giving up.
        assert len(retries) == 2 * (sandbox.environment.pull.attempts - 1), retries
    finally:
        deployer.close()
    assert time.monotonic() - started < 60  # bounded: attempts with backoff, then it gives up
    sandbox.assert_settled(live, "failed")


def test_a_private_registry_is_refused_without_the_login_and_pulled_with_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    private_registry_case(sandbox, tmp_path)


# ---- a crash -----------------------------------------------------------------------------------


def test_a_crashed_container_is_restarted_by_its_engine_while_the_other_host_serves(
    sandbox: Sandbox,
) -> None:
    live, _ = sandbox.live_and_other()
    back, answered = crash_one_and_wait(sandbox)
    print(f"crash: serving again after {back:.1f} s; the other host answered {answered}")
    assert sandbox.served_versions() == [live, live]


# ---- disk ------------------------------------------------------------------------------------


@dataclass
class SmallHost:
    fleet: Fleet
    environment: Environment
    box: Sandbox


@pytest.fixture(scope="module")
def small_host(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallHost]:
    """A fleet of one host whose container storage is a 64 MB file system (a tmpfs mounted
    on its graphroot); `pull.min_free_mb` 128."""
    state = tmp_path_factory.mktemp("small-fleet")
    address = loopback(191 + worker_index())
    text = environment_toml(
        state, sandbox.releases.image, state / "roots", signing_key=sandbox.releases.signing_key,
        pull="attempts = 2\nbackoff_s = 1\nmin_free_mb = 128",
    )  # fmt: skip
    text = text[: text.index("\n[[hosts]]")] + (
        f'\n[[hosts]]\nname = "small-1"\naddress = "{address}"\napp_bind = "{address}"\n'
    )
    (state / "small.toml").write_text(text)
    environment = load_environment(str(state / "small.toml"))
    fleet = fleet_of([environment], state, registry=sandbox.releases.registry)
    graphroot = fleet.graphroot(fleet.hosts[0])
    graphroot.mkdir(parents=True)
    mount = shutil.which("mount")
    assert mount is not None
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(graphroot)], check=True)
    try:
        fleet.up()
        box = Sandbox(fleet, environment, state / "small.toml", sandbox.releases, [])
        deployer = box.orchestrator()
        try:
            deployer.setup()
        finally:
            deployer.close()
        yield SmallHost(fleet, environment, box)
    finally:
        fleet.down()  # unmounts what is mounted at or below the graphroot, the tmpfs too


def test_a_pull_is_refused_below_the_free_space_minimum(small_host: SmallHost) -> None:
    box, environment = small_host.box, small_host.environment
    deployer = box.orchestrator()
    try:
        with pytest.raises(DeployError, match=r"small-1: not pulling .*: only \d+ MB free in "):
            deployer.deploy(box.releases.v1)
        assert deployer.outcome is not None
        assert "below pull.min_free_mb = 128 MB" in deployer.outcome.detail
        host = environment.hosts[0]
        image = environment.image_ref(box.releases.v1, deployer._digest_of(box.releases.v1))
        assert not deployer.runners[host.name].run(commands.image_exists(image), check=False).ok
        assert deployer.lock_info() is None
        assert deployer.audit_log(1)[-1]["result"] == "failed"
    finally:
        deployer.close()
    assert box.served_versions() == [None]  # nothing was running, nothing runs now


# ---- one host gone -----------------------------------------------------------------------------


def test_one_host_gone_the_others_are_released_with_hosts_and_partial(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_DEPLOY_TIMELINES", str(tmp_path))
    live, other = sandbox.live_and_other()
    healthy, gone = sandbox.environment.hosts
    sandbox.fleet.stop_ssh(sandbox.fleet.host(gone.name))
    try:
        # All-or-nothing by default: refused, nothing changed.
        assert cli.run("deploy", sandbox.environment, version=other) == 1
        # Without --partial, --hosts is not taken as consent.
        with pytest.raises(cli.CliError, match="add --partial"):
            cli.run("deploy", sandbox.environment, version=other, hosts=healthy.name)
        assert (
            cli.run("deploy", sandbox.environment, version=other, hosts=healthy.name, partial=True)
            == 0
        )
        assert sandbox.served_versions() == [other, live]  # the gone host's nginx still serves
        assert cli.run("rollback", sandbox.environment, hosts=healthy.name, partial=True) == 0
        assert sandbox.served_versions() == [live, live]
        assert (
            cli.run("deploy", sandbox.environment, version=other, hosts=healthy.name, partial=True)
            == 0
        )
    finally:
        sandbox.fleet.start_ssh(sandbox.fleet.host(gone.name))
    deployer = sandbox.orchestrator()
    try:
        entries = deployer.audit_log(4)
        assert [(e["action"], e["result"], e["skipped"]) for e in entries] == [
            ("deploy", "refused", []),
            ("deploy", "ok", [gone.name]),
            ("rollback", "ok", [gone.name]),
            ("deploy", "ok", [gone.name]),
        ]
        # The next full deploy brings the skipped host in line.
        assert deployer.deploy(other).result == "ok"
    finally:
        deployer.close()
    sandbox.assert_settled(other, "ok")
