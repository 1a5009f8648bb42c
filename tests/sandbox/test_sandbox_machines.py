"""Hosts that are whole machines: set up from bare by a sudo admin (or root), deployed to as a
non-root user, back by themselves after a reboot.

Two systemd-booting machines (sandbox.machines) start as bare Debian 12 with sshd and sudo, and
the `admin` user with passwordless sudo that a cloud image's first boot makes. `setup` logs in as
that admin and makes them ready through sudo; every deploy after it logs in as `deploy`, whose
sudoers file allows one root-owned helper (switch colours, reload or start nginx) and nothing
else, and whose containers are rootless. Everything here runs against the real machines over
SSH.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import paramiko
import pytest

from imdb_deploy import champion
from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.orchestrator import running_release
from imdb_deploy.bluegreen.runner import AsRoot, RemoteError
from tests.sandbox.conftest import (
    Releases,
    Sandbox,
    deploy_and_roll_back_under_load,
    failed_requests,
    fleet_of_kind,
    machine_hosts,
    reboot_until_serving,
    set_up,
    under_load,
)

pytestmark = pytest.mark.integration

# A machine's reboot, measured here: 1-3 s from `podman restart` to its live release answering
# again (systemd's shutdown, the boot, the deploy user's restore unit, the API's start). A
# shutdown held up by a unit that does not stop (before the restore unit stopped its container
# itself: 30 s, Podman's stop timeout for the machine) must fail this.
REBOOT_BOUND_S = 20.0


@pytest.fixture(scope="module")
def machines(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Two bare machines; removed at the end, disks and all."""
    with fleet_of_kind(
        releases, tmp_path_factory.mktemp("machines"), "machine", machine_hosts()
    ) as box:
        yield box


@pytest.fixture(scope="module")
def first_setup(machines: Sandbox) -> dict[str, list[str]]:
    return set_up(machines)


def _deploy_run(box: Sandbox, host: str, command: str) -> tuple[bool, str]:
    deployer = box.orchestrator()
    try:
        result = deployer.runners[host].run(command, check=False)
    finally:
        deployer.close()
    return result.ok, (result.stdout + result.stderr).strip()


def test_a_bare_machine_is_set_up_through_sudo_and_again_as_root_changes_nothing(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    environment = machines.environment
    assert any("as admin (through sudo)" in line for line in machines.lines)
    for host in environment.hosts:
        changed = first_setup[host.name]
        assert any(change.startswith("installed podman") for change in changed), changed
        expected = (
            "user deploy", "deploy key", "linger", "sudoers", "storage overlay", "nginx helper",
            "user imdb-read", "reader key",
        )  # fmt: skip
        for change in (*expected, "restore unit"):
            assert change in changed, (host.name, changed)
        assert "nginx default site removed" in changed
        # What went in through sudo is root's, as if root had written it.
        site = commands.site_path(environment, environment.layout(host))
        owner = machines.fleet.machines.run_in(host.name, f"stat -c %U:%a {site}").strip()
        assert owner == "root:644"
        leftovers = "find /tmp -maxdepth 1 -user admin"  # the admin's staged uploads
        assert machines.fleet.machines.run_in(host.name, leftovers).strip() == ""
    # Root's own login (a server whose provider hands out root) finds the same host ready.
    as_root = environment.model_copy(
        update={"setup": environment.setup.model_copy(update={"user": "root"})}
    )
    del machines.lines[:]
    assert set_up(machines, as_root) == {host.name: [] for host in environment.hosts}
    assert any("as root (logged in as root)" in line for line in machines.lines)
    assert any("nothing changed" in line for line in machines.lines)
    setups = [e for e in machines.audit() if e["action"] == "setup"]
    assert [e["result"] for e in setups] == ["ok", "ok"]
    assert "user deploy" in str(setups[0]["detail"])


def test_a_setup_user_that_cannot_log_in_fails_setup_audited_and_changes_nothing(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    environment = machines.environment
    before = machines.served_versions()
    stranger = environment.model_copy(
        update={"setup": environment.setup.model_copy(update={"user": "nobody"})}
    )
    deployer = machines.orchestrator(stranger)
    try:
        with pytest.raises(DeployError, match=r"setup failed: .*login refused"):
            deployer.setup()
        entry = deployer.audit_log(1)[-1]
    finally:
        deployer.close()
    assert (entry["action"], entry["result"]) == ("setup", "failed")
    assert "login refused" in str(entry["detail"])
    assert machines.served_versions() == before


def test_the_deploy_user_may_run_as_root_exactly_the_nginx_helper(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    environment = machines.environment
    host = environment.hosts[0].name
    helper = str(commands.nginx_helper_path(environment))
    ok, who = _deploy_run(machines, host, "id -un; id -u")
    assert ok, who
    assert who.split()[0] == "deploy", who
    assert who.split()[1] != "0", who
    ok, listing = _deploy_run(machines, host, "sudo -n -l")
    assert ok, listing
    allowed = listing[listing.index("NOPASSWD:") :].split("NOPASSWD:", 1)[1]
    assert [part.strip() for part in allowed.split(",")] == [helper]
    refused, why = _deploy_run(machines, host, "sudo -n cat /etc/shadow")
    assert not refused
    assert "password is required" in why
    # So the deploy user could not be setup's admin: refused before anything is done.
    deployer = machines.orchestrator()
    try:
        with pytest.raises(RemoteError, match="neither root nor allowed passwordless sudo"):
            AsRoot(deployer.runners[host]).run("apt-get install -y nginx")
    finally:
        deployer.close()
    assert _deploy_run(machines, host, f"sudo -n {helper} running")[0]
    # What setup installed passes visudo, and a broken file never reaches sudoers.d.
    console = machines.fleet.machines
    assert "parsed OK" in console.run_in(host, "visudo -c")
    staged, target = "/etc/sudoers.d/.broken.staged", "/etc/sudoers.d/mlops-imdb-broken"
    result = console.run_in(
        host,
        f"printf 'deploy ALL=(root) NOPASSWD: ALL,,\\n' > {staged}; "
        f"({commands.install_sudoers(PurePosixPath(staged), PurePosixPath(target))}) 2>&1; "
        "echo exit=$?; "
        f"test ! -e {target} && test ! -e {staged} && echo neither-left",
    )
    assert "exit=1" in result
    assert "syntax error" in result
    assert "neither-left" in result, result
    assert _deploy_run(machines, host, f"sudo -n {helper} running")[0]


def test_the_deploy_user_cannot_make_roots_nginx_read_or_write_a_path_of_its_choosing(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    """Stop 22's attack: as `deploy`, append `include /etc/shadow;` (or an `error_log` line) to
    the upstream file the system nginx reads, then run nginx's check as root. Now the file is
    root's, nginx is not the deploy user's to run as root, and the helper takes a colour only."""
    environment = machines.environment
    host = environment.hosts[0]
    upstream = commands.upstream_path(environment, environment.layout(host))
    helper = commands.nginx_helper_path(environment)
    before = _upstream(machines, host.name)
    for line in ("include /etc/shadow;", "error_log /etc/cron.d/pwned;"):
        wrote, why = _deploy_run(machines, host.name, f"echo '{line}' >> {upstream}")
        assert not wrote
        assert "Permission denied" in why, why
    checked, why = _deploy_run(machines, host.name, "sudo -n /usr/sbin/nginx -t -q")
    assert not checked
    assert "password is required" in why, why
    for argument in ("'blue; include /etc/shadow'", "../../etc/shadow", "-c/tmp/x.conf"):
        ran, why = _deploy_run(machines, host.name, f"sudo -n {helper} {argument}")
        assert not ran
        assert "usage:" in why, why
    # Everything the system nginx reads is root's, and unchanged.
    site = commands.site_path(environment, environment.layout(host))
    owners = machines.fleet.machines.run_in(host.name, f"stat -c %U:%a {upstream} {helper} {site}")
    assert owners.split() == ["root:644", "root:755", "root:644"]
    assert _upstream(machines, host.name) == before
    assert "pwned" not in machines.fleet.machines.run_in(host.name, "ls /etc/cron.d")


def test_releases_run_rootless_as_the_deploy_user(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    live, _ = machines.live_and_other()
    environment = machines.environment
    for host in environment.hosts:
        colour = "blue" if "live colour: blue" in _upstream(machines, host.name) else "green"
        ok, names = _deploy_run(machines, host.name, "podman ps --format '{{.Names}}'")
        assert ok, names
        assert environment.container_name(colour) in names.split(), names
        # Rootless storage on native overlay, not vfs's full copy of every layer.
        ok, driver = _deploy_run(
            machines, host.name, "podman info --format '{{.Store.GraphDriverName}}'"
        )
        assert (ok, driver) == (True, "overlay"), driver
        # root's engine runs nothing: the release is the deploy user's
        assert machines.fleet.machines.run_in(host.name, "podman ps -q").strip() == ""
        layout = environment.layout(host)
        owner = machines.fleet.machines.run_in(host.name, f"stat -c %U {layout.state_file}")
        assert owner.strip() == "deploy"
    assert machines.served_versions() == [live, live]


def test_the_reader_reads_which_release_runs_and_can_do_nothing_else(
    machines: Sandbox, first_setup: dict[str, list[str]]
) -> None:
    """The champion's login (CD's train job holds its key, outside the protected environment):
    whatever it asks, it gets the release state; no shell, no forwarding, no sudo."""
    live, _ = machines.live_and_other()
    environment = machines.environment
    reader = environment.reader
    assert reader is not None
    assert reader.identity_file is not None
    deployer = machines.orchestrator()
    try:
        as_deploy = running_release(environment.name, deployer.states())
    finally:
        deployer.close()
    assert as_deploy is not None
    assert as_deploy[0] == live
    assert champion.live_release(environment, {}) == as_deploy  # read as the reader
    for host in environment.hosts:
        state = machines.fleet.machines.run_in(
            host.name, f"cat {environment.layout(host).state_file}"
        )
        client = paramiko.SSHClient()
        client.load_host_keys(str(environment.ssh.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            host.address, environment.ssh_port(host), username=reader.user,
            key_filename=str(reader.identity_file), look_for_keys=False, allow_agent=False,
        )  # fmt: skip
        try:
            for asked in ("id -un", "sudo -n cat /etc/shadow", "sh -c 'echo pwned > /tmp/x'"):
                _, out, err = client.exec_command(asked, timeout=30)
                assert (out.read().decode(), err.read().decode()) == (state, ""), asked
            with pytest.raises(paramiko.ChannelException, match="prohibited"):
                client.get_transport().open_channel(  # type: ignore[union-attr]
                    "direct-tcpip", (host.address, environment.app.ports["blue"]), ("", 0)
                )
        finally:
            client.close()
        keys = machines.fleet.machines.run_in(
            host.name, f"stat -c %U:%a ~{reader.user}/.ssh ~{reader.user}/.ssh/authorized_keys"
        )
        assert keys.split() == ["root:755", "root:644"]
        assert machines.fleet.machines.run_in(host.name, "ls /tmp").split().count("x") == 0


def _upstream(box: Sandbox, name: str) -> str:
    layout = box.environment.layout(next(h for h in box.environment.hosts if h.name == name))
    path = commands.upstream_path(box.environment, layout)
    return box.fleet.machines.run_in(name, f"cat {shlex.quote(str(path))}")


def test_a_rebooted_machine_serves_its_live_release_again_while_the_other_serves_on(
    machines: Sandbox, tmp_path: Path
) -> None:
    """Two reboots in a row: the first of a host whose release a deploy started, the second of
    one whose release its restore unit started after the first."""
    live, _ = machines.live_and_other()
    rebooted, other = machines.environment.hosts
    reboots: list[dict[str, float]] = []

    def reboot_twice() -> None:
        for _ in range(2):
            reboots.append(reboot_until_serving(machines, live, limit_s=REBOOT_BOUND_S))

    results, seconds = under_load(
        machines, tmp_path, reboot_twice, environment=machines.environment.only([other.name])
    )
    for took in reboots:
        print(
            f"reboot of {rebooted.name}: sshd after {took['ssh']:.1f} s, its live release "
            f"served after {took['serving']:.1f} s"
        )
    print(
        f"{other.name} meanwhile: {results[0]['requests']} requests in {seconds:.1f} s, "
        f"{failed_requests(results)} failed"
    )
    assert failed_requests(results) == 0
    assert results[0]["requests"] > 100
    assert all(took["serving"] < REBOOT_BOUND_S for took in reboots), reboots
    # A real boot: the machine's init and the release's container are younger than the reboot.
    console = machines.fleet.machines
    assert int(console.run_in(rebooted.name, "ps -o etimes= -p 1")) <= seconds
    assert machines.served_versions() == [live, live]
    # The host says what it did at boot: an audit entry of its own.
    entries = [e for e in machines.audit() if e.get("action") == "restore"]
    assert entries, "no restore entry in the audit log"
    assert (entries[-1]["host"], entries[-1]["result"]) == (rebooted.name, "ok")
    # Only the live colour came back: the kept one stays stopped.
    ok, names = _deploy_run(machines, rebooted.name, "podman ps --format '{{.Names}}'")
    assert ok, names
    assert len(names.split()) == 1, names


def test_deploy_and_rollback_on_machines_drop_no_request(machines: Sandbox, tmp_path: Path) -> None:
    deploy_and_roll_back_under_load(machines, tmp_path, "machines")
