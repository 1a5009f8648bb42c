"""The sandbox fleet for real: sshd per host, Podman over SSH, host key checks, faults.

Its own fleet on 127.0.N.150+ (this checkout's loopback /24) port 2299 and its own registry on a
free port, all state under pytest's temporary directory; the fixtures always tear down with
`down()`. The image pulled over SSH is made here (a `sleep` binary and its libraries), so
nothing depends on a base image.

Measured on the project's machine (2 cores): SSH connect + `true` about 0.25-0.3 s, `true` on
an open connection about 0.16 s, of which about 0.15 s is root's ~/.bashrc there (Debian's bash
sources it for commands run by sshd, and it runs `pyenv init`); pulling the 326 MB API image
into an empty host storage over SSH about 4.7 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import paramiko
import pytest
from fabric import Config, Connection
from invoke.exceptions import UnexpectedExit

from imdb_deploy.bluegreen import hostkeys
from imdb_deploy.bluegreen.config import Environment, Redactor
from imdb_deploy.bluegreen.runner import HostRunner
from imdb_deploy.engine import podman
from imdb_deploy.engine.processes import wait_until
from imdb_deploy.engine.registry import LocalRegistry
from imdb_deploy.sandbox import Fleet, SandboxHost
from imdb_deploy.sandbox import fleet as fleet_module
from tests.support import free_port, loopback

pytestmark = pytest.mark.integration

PORT = 2299


def connect(fleet: Fleet, host: SandboxHost, known_hosts: Path | None = None) -> Connection:
    """A Fabric connection that trusts only the given known_hosts (the fleet's by default)."""
    connection = Connection(
        host.address,
        user="root",
        port=host.ssh_port,
        # Nothing from the machine's or the user's ssh_config: only what is given here. No
        # stdin forwarding: invoke would read ours (pytest refuses; a CI job has none).
        config=Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}}),
        connect_timeout=10,
        connect_kwargs={
            "key_filename": str(fleet.identity_file),
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    # Fabric itself accepts any host key (AutoAddPolicy) and loads no known_hosts.
    connection.client.load_host_keys(str(known_hosts or fleet.known_hosts))
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection


def remote(fleet: Fleet, host: SandboxHost, command: str) -> str:
    """Run one command on `host` over a fresh connection; its stripped stdout."""
    with connect(fleet, host) as connection:
        return str(connection.run(command, hide=True).stdout).strip()


def local_podman(fleet: Fleet, host: SandboxHost, *args: str) -> str:
    """`podman` on this machine against `host`'s engine, as its SSH sessions see it."""
    executable = shutil.which("podman")
    assert executable is not None
    completed = subprocess.run(
        [executable, *args],
        env={**os.environ, **fleet.engine_env(host)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return completed.stdout


def check_prerequisites(
    require: Callable[[bool, str], None], require_tool: Callable[[str], str]
) -> None:
    require(os.geteuid() == 0, "root (an sshd per host, rootful Podman)")
    require(os.access(fleet_module.SSHD, os.X_OK), f"{fleet_module.SSHD} (openssh-server)")
    for tool in ("ssh-keygen", "podman", "runc", "docker-registry", "ldd"):
        require_tool(tool)


@pytest.fixture(scope="module")
def registry_address(
    tmp_path_factory: pytest.TempPathFactory,
    require: Callable[[bool, str], None],
    require_tool: Callable[[str], str],
) -> Iterator[str]:
    check_prerequisites(require, require_tool)
    local = LocalRegistry(tmp_path_factory.mktemp("registry"), f"127.0.0.1:{free_port()}")
    try:
        yield local.start()
    finally:
        local.stop()


def make_fleet(state: Path, registry: str, *hosts: tuple[str, str]) -> Fleet:
    return Fleet(
        state,
        tuple(
            SandboxHost(name, address, PORT, PurePosixPath(state / "deploy" / name))
            for name, address in hosts
        ),
        registry=registry,
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, registry_address: str) -> Iterator[Fleet]:
    fleet = make_fleet(
        tmp_path_factory.mktemp("sandbox"),
        registry_address,
        ("itest-a", loopback(150)),
        ("itest-b", loopback(151)),
    )
    try:
        fleet.up()
        yield fleet
    finally:
        fleet.down(forget=True)


def rootfs_tarball(binary: str, target: Path) -> Path:
    """A tar of `binary` and the shared libraries `ldd` lists for it: a minimal root fs."""
    listing = subprocess.run(
        ["ldd", binary], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    files = [binary] + [word for word in listing.split() if word.startswith("/")]
    with tarfile.open(target, "w") as tar:
        for path in files:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    return target


@pytest.fixture(scope="module")
def image(fleet: Fleet, registry_address: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny image in the test registry, pushed from host A's engine (never from B's)."""
    name = f"{registry_address}/sandbox-sleep:1"
    tarball = rootfs_tarball("/bin/sleep", tmp_path_factory.mktemp("rootfs") / "rootfs.tar")
    builder = fleet.host("itest-a")
    local_podman(fleet, builder, "import", "-q", str(tarball), name)
    # Plain HTTP: allowed by the host's registries.conf, no --tls-verify flag needed.
    local_podman(fleet, builder, "push", "-q", name)
    return name


def test_fleet_is_up_and_up_again_is_a_no_op(fleet: Fleet) -> None:
    before = fleet.status()
    assert [entry["sshd_running"] for entry in before] == [True, True]
    assert [entry["ssh"] for entry in before] == [f"{loopback(150)}:2299", f"{loopback(151)}:2299"]
    known_hosts = fleet.known_hosts.read_text()
    fleet.up()
    assert fleet.status() == before
    assert fleet.known_hosts.read_text() == known_hosts
    assert oct(fleet.identity_file.stat().st_mode & 0o777) == "0o600"


def test_each_host_sees_its_own_engine_storage(fleet: Fleet) -> None:
    seen = {}
    for host in fleet.hosts:
        store = remote(
            fleet, host, "podman info --format '{{.Store.GraphRoot}} {{.Store.RunRoot}}'"
        )
        seen[host.name] = store
        assert store == f"{fleet.graphroot(host)} {fleet.runroot(host)}"
    assert seen["itest-a"] != seen["itest-b"]


def test_a_container_started_over_ssh_outlives_the_session(fleet: Fleet, image: str) -> None:
    host, other = fleet.host("itest-b"), fleet.host("itest-a")
    with connect(fleet, host) as connection:
        # Host B's storage is empty: the image comes from the plain-HTTP registry.
        connection.run(f"podman pull -q {image}", hide=True)
        connection.run(
            f"podman run -d --name sleeper --network host --stop-signal SIGKILL {image} "
            "/bin/sleep 600",
            hide=True,
        )
    time.sleep(0.5)
    assert remote(fleet, host, "podman inspect -f '{{.State.Running}}' sleeper") == "true"
    # Host A's engine does not see host B's container.
    assert "sleeper" not in local_podman(fleet, other, "ps", "-a", "--format", "{{.Names}}")
    local_podman(fleet, host, "rm", "-f", "sleeper")


def test_ssh_round_trip_is_cheap_enough_to_call_per_step(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    started = time.perf_counter()
    with connect(fleet, host) as connection:
        connection.run("true", hide=True)
        connected = time.perf_counter()
        connection.run("true", hide=True)
        again = time.perf_counter()
    # Generous bounds (measured: ~0.3 s and ~0.16 s): a regression to seconds shows here.
    assert connected - started < 5
    assert again - connected < 3


def test_an_unknown_host_key_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    connection = connect(fleet, fleet.hosts[0], known_hosts=empty)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts") as caught:
        connection.open()
    assert not isinstance(caught.value, paramiko.BadHostKeyException)
    # Fabric's close() does nothing for a connection that never opened, yet paramiko's
    # transport thread and socket live on (sshd waits out LoginGraceTime): close the client.
    connection.client.close()


def test_a_changed_host_key_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    host, other = fleet.hosts
    # Host A's address with host B's key: what a reinstalled or impostor host would present.
    other_key = (fleet.host_dir(other) / "ssh_host_ed25519_key.pub").read_text()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(fleet_module.known_hosts_line(host.address, host.ssh_port, other_key) + "\n")
    connection = connect(fleet, host, known_hosts=wrong)
    with pytest.raises(paramiko.BadHostKeyException):
        connection.open()
    connection.client.close()


def trusting(fleet: Fleet, known_hosts: Path) -> Environment:
    """An environment of the fleet's hosts whose pinned keys are `known_hosts`."""
    return Environment.model_validate({
        "name": "trust-test", "sandbox": True, "image": "127.0.0.1:5000/x",
        "deploy_root": str(known_hosts.parent / "roots"),
        "ssh": {"known_hosts": str(known_hosts), "port": fleet.hosts[0].ssh_port,
                "identity_file": str(fleet.identity_file), "connect_timeout_s": 5},
        "hosts": [{"name": h.name, "address": h.address} for h in fleet.hosts],
    })  # fmt: skip


def host_fingerprint(fleet: Fleet, host: SandboxHost) -> str:
    """What the host's console would say: ssh-keygen -l of its public key file."""
    public = fleet.host_dir(host) / "ssh_host_ed25519_key.pub"
    listing = subprocess.run(
        ["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=True
    ).stdout
    return listing.split()[1]


def test_trust_pins_a_host_only_with_its_fingerprint_and_never_a_changed_key(
    fleet: Fleet, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    environment = trusting(fleet, known_hosts)
    first, second = fleet.hosts
    right = host_fingerprint(fleet, first)

    # Nobody confirmed (no terminal) and no fingerprint given: shown, not pinned.
    verdicts = hostkeys.trust(environment, confirm=None)
    assert all(v.refused and "not pinned" in v.result for v in verdicts)
    assert right in {key.fingerprint for key in verdicts[0].offered}
    assert not known_hosts.exists()

    # The expected fingerprint pins exactly that host's key; a wrong one pins nothing.
    verdicts = hostkeys.trust(environment, expected=[right], confirm=None)
    assert [v.result.split(":")[0] for v in verdicts] == ["pinned now", "refused"]
    assert "not the expected" in verdicts[1].result
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    runner = HostRunner(environment, environment.hosts[0], Redactor([]), {})
    try:
        assert runner.run("echo connected").stdout == "connected\n"  # the pin is what SSH uses
    finally:
        runner.close()
    before = known_hosts.read_text()
    assert hostkeys.trust(environment, expected=[right], confirm=None)[0].result == (
        "pinned already"
    )
    assert known_hosts.read_text() == before  # idempotent

    # Host one's address pinned with host two's key: what a rebuilt host or an impostor shows.
    other_key = (fleet.host_dir(second) / "ssh_host_ed25519_key.pub").read_text()
    known_hosts.write_text(
        fleet_module.known_hosts_line(first.address, first.ssh_port, other_key) + "\n"
    )
    changed = hostkeys.trust(environment, expected=[right], confirm=lambda prompt: True)[0]
    assert changed.refused
    assert "its host key CHANGED" in changed.result
    assert host_fingerprint(fleet, second) in changed.result  # what was pinned
    assert right in changed.result  # what it offers now
    assert "Nothing was changed" in changed.result
    assert known_hosts.read_text().count("\n") == 1  # the old pin stays; nothing was added


def test_dropped_connections_and_a_stopped_listener(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    with connect(fleet, host) as connection:
        connection.run("true", hide=True)
        # At least ours; earlier tests' closed connections may still be winding down.
        assert fleet.drop_connections(host) >= 1
        # Fabric reopens a connection whose transport died between commands (once paramiko has
        # noticed: on a busy machine that takes a moment).
        assert wait_until(lambda: not connection.is_connected, timeout=10)
        assert connection.run("echo again", hide=True).stdout.strip() == "again"

        # Dropped in the middle of a command: no exception from paramiko, the command's
        # result is exit status -1 (no exit status arrived), which Fabric raises as such.
        dropper = threading.Timer(0.5, fleet.drop_connections, args=(host,))
        dropper.start()
        with pytest.raises(UnexpectedExit) as caught:
            connection.run("sleep 5; echo done", hide=True)
        dropper.join()
        assert caught.value.result.exited == -1
        assert "done" not in caught.value.result.stdout

    # The listener stopped: new connections are refused, the host key stays the same.
    pid = fleet.status()[0]["pid"]
    assert fleet.stop_ssh(host)
    refused = connect(fleet, host)
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        refused.open()
    refused.client.close()
    assert fleet.status()[0]["sshd_running"] is False
    assert fleet.start_ssh(host) != pid
    assert remote(fleet, host, "echo back") == "back"


NGINX_CONF = """\
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
worker_processes 1;
events {{}}
http {{
    access_log off;
    server {{ listen {address}:{port}; return 200 "ok"; }}
}}
"""


def test_down_stops_containers_nginx_and_sshd_and_keeps_the_keys(
    tmp_path: Path, registry_address: str, image: str, require_tool: Callable[[str], str]
) -> None:
    require_tool("nginx")
    fleet = make_fleet(tmp_path / "sandbox", registry_address, ("itest-down", loopback(160)))
    host = fleet.hosts[0]
    try:
        fleet.up()
        known_hosts = fleet.known_hosts.read_text()
        layout = host.layout
        Path(layout.nginx_dir).mkdir(parents=True)
        Path(layout.nginx_conf).write_text(
            NGINX_CONF.format(
                prefix=layout.nginx_dir, address=host.address, port=free_port(host.address)
            )
        )
        with connect(fleet, host) as connection:
            connection.run(f"podman pull -q {image}", hide=True)
            # SIGKILL: `sleep` as PID 1 ignores SIGTERM, and `podman stop -t 5` would wait 5 s.
            connection.run(
                f"podman run -d --name web --network host --stop-signal SIGKILL {image} "
                "/bin/sleep 600",
                hide=True,
            )
            # As the deploy's setup step starts it: detached, it outlives the session.
            connection.run(f"nginx -c {layout.nginx_conf} -p {layout.nginx_dir}/", hide=True)
        # nginx writes its PID file once its master has forked away: on a busy machine, a moment
        # after the command returned.
        assert wait_until(
            lambda: fleet_module.nginx_master_pid(Path(layout.nginx_pid), layout.nginx_dir)
            is not None,
            timeout=10,
        )
        nginx = fleet_module.nginx_master_pid(Path(layout.nginx_pid), layout.nginx_dir)
        assert nginx is not None
        sshd = fleet.status()[0]["pid"]

        stopped = fleet.down()

        # The sshd of a connection just closed may still be exiting: it is then listed too.
        assert [entry for entry in stopped if "ssh connection" not in entry] == [
            f"itest-down: sshd {sshd}",
            "itest-down: container web",
            f"itest-down: nginx {nginx}",
        ]
        assert not fleet_module._running(nginx)
        assert fleet.status()[0]["sshd_running"] is False
        assert podman.mount_points_below(fleet.graphroot(host)) == []
        assert not fleet.runroot(host).exists()
        assert local_podman(fleet, host, "ps", "-a", "-q") == ""
        # The image stays, as on a real host; the keys stay, so known_hosts stays valid.
        assert image in local_podman(fleet, host, "images", "--format", "{{.Repository}}:{{.Tag}}")
        fleet.up()
        assert fleet.known_hosts.read_text() == known_hosts
        assert remote(fleet, host, "echo up") == "up"
    finally:
        fleet.down(forget=True)
    assert not (tmp_path / "sandbox").exists()
    assert not fleet.runroot(host).parent.exists()
