"""A fleet of simulated deploy hosts: one real sshd and one Podman storage per host.

Per host, under `<state_dir>/hosts/<name>/`:

    sshd_config, ssh_host_ed25519_key(.pub)   the host's SSH daemon and its identity
    sshd.pid.json, sshd.log                    the listener (ManagedProcess) and its log
    engine/containers.conf, storage.conf, registries.conf
                                               what `podman` in that host's SSH sessions uses
    storage/                                   the host's image and container storage (graphroot)

Shared by the fleet: `<state_dir>/id_ed25519` (the key the deploy logs in with),
`authorized_keys` (its public half), `read_ed25519` (an environment's reader's key, which setup
authorizes on machines) and `known_hosts` (every host's key: clients verify hosts).
Only the runroots live elsewhere, under /run with a short hashed name (see `runroot_for`).

Host keys are made once and kept across `down()`/`up()`, so a `known_hosts` handed to a deploy
stays valid; `down(forget=True)` removes everything.

Hosts of kind `machine` are whole booting machines instead (see `sandbox.machines`): `up()` powers
them on (a new one starts bare), `down()` powers them off with their disks kept, `reboot()` reboots
one.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from imdb_deploy.bluegreen.layout import HostLayout
from imdb_deploy.engine.podman import (
    answers,
    containers_conf,
    mount_points_below,
    registries_conf,
    unmount_until_clear,
)
from imdb_deploy.engine.processes import ManagedProcess, run_tool, wait_until
from imdb_deploy.engine.registry import DEFAULT_REGISTRY_ADDRESS
from imdb_deploy.programs import Program
from imdb_deploy.sandbox.machines import (
    MachineEngine,
    MachineError,
    MachineSpec,
    apt_cache_dir,
    engine_for,
    sshd_drop_in,
)

# sshd re-executes itself for every connection and insists on an absolute path to do so.
SSHD: Program = "/usr/sbin/sshd"
DOCKERD: Program = "/usr/sbin/dockerd"
# sshd refuses to start without its privilege separation directory; /run is a tmpfs.
SSHD_PRIVSEP_DIR = Path("/run/sshd")
RUNROOT_BASE = Path("/run")
# Podman refuses long runroot paths (reported over 50 characters): stay within that.
MAX_RUNROOT_LENGTH = 50
PROC = Path("/proc")
# The listener's own environment (sessions get theirs from sshd, plus SetEnv).
SSHD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class SandboxError(RuntimeError):
    """The sandbox fleet could not be brought up or torn down."""


@dataclass(frozen=True)
class SandboxHost:
    """One simulated host: its SSH listener and where the deploy keeps its files on it."""

    name: str
    address: str
    ssh_port: int
    deploy_root: PurePosixPath
    # light: an sshd sharing this machine's file system; machine: a booting machine of its own.
    kind: Literal["light", "machine"] = "light"
    # A light host's container engine: Podman (its storage), or a Docker Engine of its own.
    engine: Literal["podman", "docker"] = "podman"

    def __post_init__(self) -> None:
        if not _HOST_NAME.match(self.name):
            raise ValueError(f"host name {self.name!r}: use letters, digits, '.', '_' and '-'")
        try:
            address = ipaddress.IPv4Address(self.address)
        except ValueError as error:
            raise ValueError(f"{self.name}: address {self.address!r} is not IPv4") from error
        if not address.is_loopback:
            raise ValueError(f"{self.name}: {self.address} is not in 127.0.0.0/8 (loopback only)")
        if not 0 < self.ssh_port < 65536:
            raise ValueError(f"{self.name}: port {self.ssh_port} out of range")
        if not self.deploy_root.is_absolute():
            raise ValueError(f"{self.name}: deploy_root {self.deploy_root} is not absolute")

    @property
    def ssh_address(self) -> str:
        """`address:port`, as shown by `status()`."""
        return f"{self.address}:{self.ssh_port}"

    @property
    def layout(self) -> HostLayout:
        """The deploy's paths on this host."""
        return HostLayout(self.deploy_root)


# ---------------------------------------------------------------- pure parts: names and configs


def runroot_for(state_dir: Path, host_name: str, base: Path = RUNROOT_BASE) -> Path:
    """The host's Podman runroot: `<base>/mlops-sandbox-<12 hex of sha256(state_dir)>/<name>`.

    Short because Podman refuses long runroots; hashed from the (absolute) state directory so
    two fleets never share one, and stable so `down()` finds what `up()` made.
    """
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return base / f"mlops-sandbox-{digest}" / host_name


def known_hosts_line(address: str, port: int, public_key: str) -> str:
    """One known_hosts line, `[address]:port type base64` (a bare address for port 22).

    `public_key` is the text of a `.pub` file; its comment is dropped.
    """
    fields = public_key.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_key!r}")
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {fields[0]} {fields[1]}"


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value)


def storage_conf(graphroot: Path, runroot: Path) -> str:
    """storage.conf for one host: overlay storage in its own graphroot and runroot."""
    return (
        "[storage]\n"
        'driver = "overlay"\n'
        f"graphroot = {_toml_string(str(graphroot))}\n"
        f"runroot = {_toml_string(str(runroot))}\n"
    )


def _sshd_word(value: str) -> str:
    """One sshd_config argument, double-quoted when it holds spaces or a '#'."""
    if any(bad in value for bad in ('"', "\\", "\n", "\r")):
        raise ValueError(f"cannot be written to sshd_config: {value!r}")
    if not value or any(special in value for special in (" ", "\t", "#")):
        return f'"{value}"'
    return value


def sshd_config(
    *,
    address: str,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    pid_file: Path,
    environment: Mapping[str, str],
) -> str:
    """A complete, standalone sshd_config for one simulated host (no system defaults read)."""
    setenv = " ".join(_sshd_word(f"{name}={value}") for name, value in environment.items())
    lines = [
        "# Written by imdb_deploy.sandbox; rewritten by every `up()`.",
        f"ListenAddress {address}:{port}",
        f"HostKey {_sshd_word(str(host_key))}",
        f"PidFile {_sshd_word(str(pid_file))}",
        f"AuthorizedKeysFile {_sshd_word(str(authorized_keys))}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        # No PAM stack for a second, private sshd; key files live under a state directory
        # whose modes sshd's StrictModes would reject.
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        # The deploy opens several channels per host, and hosts in parallel.
        "MaxStartups 64",
        "MaxSessions 64",
        "LoginGraceTime 30",
        # A standalone config has no Subsystem line: without one, Fabric's put/get (SFTP) fail.
        "Subsystem sftp internal-sftp",
        # The client's environment must not override the host's engine settings.
        "PermitUserEnvironment no",
        # Every session on this host uses this host's engine storage.
        f"SetEnv {setenv}",
    ]
    return "\n".join(lines) + "\n"


def listener_matches(cmdline: bytes, argv: list[str]) -> bool:
    """True when /proc/PID/cmdline `cmdline` is the sshd listener started with `argv`.

    sshd rewrites its command line once listening, to `sshd: <argv> [listener] 0 of 64-64
    startups`, so the exact comparison `ManagedProcess` makes would never match.
    """
    if cmdline.split(b"\0")[:-1] == [arg.encode() for arg in argv]:
        return True
    title = cmdline.rstrip(b"\0").decode(errors="replace")
    prefix = "sshd: " + " ".join(argv)
    return title == prefix or title.startswith(prefix + " ")


def _parent_pid(stat: str) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int, proc: Path = PROC) -> list[int]:
    """PIDs whose parent is `pid`, via /proc/PID/task/*/children or else every process's stat."""
    if (proc / str(pid) / "task" / str(pid) / "children").exists():
        found: set[int] = set()
        for children in (proc / str(pid) / "task").glob("*/children"):
            try:
                found.update(int(child) for child in children.read_text().split())
            except OSError:  # the thread exited meanwhile
                continue
        return sorted(found)
    # Kernels built without CONFIG_PROC_CHILDREN: scan every process's parent.
    result = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            if _parent_pid(stat.read_text()) == pid:
                result.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(result)


def stop_nginx(layout: HostLayout) -> int | None:
    """SIGQUIT (graceful) to the own nginx master of a deploy layout on a sandbox host, then
    harder; its PID if one ran. (`down()` stops the host's own; a second environment on the same
    host stops its nginx with this.)"""
    pid = nginx_master_pid(Path(layout.nginx_pid), layout.nginx_dir)
    if pid is None:
        return None
    # SIGQUIT lets workers finish their requests, as the deploy's own shutdown would.
    _terminate(pid, ((signal.SIGQUIT, 15.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
    return pid


def nginx_master_pid(pid_file: Path, nginx_dir: PurePosixPath, proc: Path = PROC) -> int | None:
    """The PID in an own nginx's pid file, if it is a live nginx master running from `nginx_dir`.

    A stale pid file may name a PID since given to another program, or another host's nginx:
    only a master whose command line mentions this prefix is ours to stop.
    """
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    title = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    if title.startswith("nginx: master process") and f"{nginx_dir}/" in title:
        return pid
    return None


def _running(pid: int, proc: Path = PROC) -> bool:
    """True while `pid` exists and is no zombie (this machine's init reaps no orphans)."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[1].split()[0].startswith("Z")


def _terminate(
    pid: int,
    steps: tuple[tuple[signal.Signals, float], ...] = (
        (signal.SIGTERM, 5.0),
        (signal.SIGKILL, 5.0),
    ),
) -> None:
    """Send each signal in turn until `pid` is gone, waiting its patience; reap it if ours."""
    for sig, patience in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if wait_until(lambda: not _running(pid), patience, 0.05):
            break
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _ssh_answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """True when an SSH server sends its banner at address:port."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as probe:
            return probe.recv(4).startswith(b"SSH-")
    except OSError:
        return False


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class _SshdListener(ManagedProcess):
    """`ManagedProcess` that recognises sshd's rewritten command line."""

    def running_pid(self) -> int | None:
        try:
            record = json.loads(self.pid_file.read_text())
            pid, argv = int(record["pid"]), [str(arg) for arg in record["argv"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            cmdline = (PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        return pid if listener_matches(cmdline, argv) else None


def _run(argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 120.0) -> str:
    """Run a tool to completion; its stdout, or SandboxError with its stderr."""
    return run_tool(argv, error=SandboxError, env=env, timeout=timeout)


def _ensure_key(private: Path, comment: str) -> bool:
    """Make an ed25519 key pair at `private` unless both halves exist; True if made."""
    public = private.with_name(private.name + ".pub")
    if private.exists() and public.exists():
        return False
    private.unlink(missing_ok=True)
    public.unlink(missing_ok=True)
    private.parent.mkdir(parents=True, exist_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)])
    # sshd refuses a host key, and ssh a client key, that others can read.
    private.chmod(0o600)
    return True


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `text` unless the file already holds it; True if written."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)
    return True


# ---------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class Fleet:
    """Simulated hosts on this machine; everything they write lives under `state_dir`."""

    state_dir: Path
    hosts: tuple[SandboxHost, ...]
    registry: str = DEFAULT_REGISTRY_ADDRESS

    def __post_init__(self) -> None:
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names must be unique: {names}")
        listeners = [host.ssh_address for host in self.hosts]
        if len(set(listeners)) != len(listeners):
            raise ValueError(f"SSH addresses must be unique: {listeners}")
        for host in self.hosts:
            runroot = str(self.runroot(host))
            if len(runroot) > MAX_RUNROOT_LENGTH:
                raise ValueError(
                    f"{host.name}: runroot {runroot} is over {MAX_RUNROOT_LENGTH} characters "
                    "(Podman refuses it): use a shorter host name"
                )

    # ------------------------------------------------------------ paths

    @property
    def root(self) -> Path:
        """`state_dir` made absolute: sshd and Podman need absolute paths."""
        return self.state_dir.resolve()

    @property
    def known_hosts(self) -> Path:
        """Every host's key, one `[address]:port ssh-ed25519 AAAA...` line per host."""
        return self.root / "known_hosts"

    @property
    def identity_file(self) -> Path:
        """The private key the deploy logs in with (mode 600)."""
        return self.root / "id_ed25519"

    @property
    def reader_identity_file(self) -> Path:
        """The private key an environment's reader logs in with (its `[reader]`), which setup
        authorizes on the machines for the one command that prints the release state."""
        return self.root / "read_ed25519"

    @property
    def authorized_keys(self) -> Path:
        """The public half of `identity_file`, accepted by every host."""
        return self.root / "authorized_keys"

    def host(self, name: str) -> SandboxHost:
        """The host called `name`."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def host_dir(self, host: SandboxHost) -> Path:
        """Where this host's own files live."""
        return self.root / "hosts" / host.name

    def graphroot(self, host: SandboxHost) -> Path:
        """The host's image and container storage."""
        return self.host_dir(host) / "storage"

    def runroot(self, host: SandboxHost) -> Path:
        """The host's Podman runroot (short, under /run); its libpod tmp_dir is inside."""
        return runroot_for(self.root, host.name)

    def _engine_dir(self, host: SandboxHost) -> Path:
        return self.host_dir(host) / "engine"

    def _host_key(self, host: SandboxHost) -> Path:
        return self.host_dir(host) / "ssh_host_ed25519_key"

    def _sshd_config_file(self, host: SandboxHost) -> Path:
        return self.host_dir(host) / "sshd_config"

    def _listener(self, host: SandboxHost) -> _SshdListener:
        return _SshdListener("sshd", self.host_dir(host))

    def _sshd_argv(self, host: SandboxHost) -> list[str]:
        listener = self._listener(host)
        # -D: the PID we record is the listener itself; -E: sshd's log beside the process log.
        return [SSHD, "-D", "-f", str(self._sshd_config_file(host)), "-E", str(listener.log_file)]

    def docker_socket(self, host: SandboxHost) -> Path:
        """A Docker host's daemon socket."""
        return self.host_dir(host) / "docker.sock"

    def _dockerd(self, host: SandboxHost) -> ManagedProcess:
        return ManagedProcess("dockerd", self.host_dir(host))

    def _dockerd_argv(self, host: SandboxHost) -> list[str]:
        # No bridge and no iptables: containers use the host's network, as the deploy runs them,
        # and this machine's firewall is left alone. The exec root holds containerd's socket:
        # short, under /run (a unix socket path has at most 107 characters).
        return [
            DOCKERD,
            f"--host=unix://{self.docker_socket(host)}",
            f"--data-root={self.graphroot(host)}",
            f"--exec-root={self.runroot(host)}",
            f"--pidfile={self.host_dir(host) / 'dockerd.pid'}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ]

    def engine_env(self, host: SandboxHost) -> dict[str, str]:
        """The variables that point the engine's CLI at this host's engine (as its SSH
        sessions get)."""
        if host.engine == "docker":
            return {
                "DOCKER_HOST": f"unix://{self.docker_socket(host)}",
                "HOME": str(self.home(host)),
            }
        engine = self._engine_dir(host)
        return {
            "CONTAINERS_CONF": str(engine / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(engine / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(engine / "registries.conf"),
            # A home of its own: the engine reads ~/.config/containers/policy.json and
            # registries.d/ there first, so each host has its own image trust, as real hosts
            # have their own /etc/containers.
            "HOME": str(self.home(host)),
        }

    def home(self, host: SandboxHost) -> Path:
        return self.host_dir(host) / "home"

    @property
    def machines(self) -> MachineEngine:
        """The engine that runs this fleet's machine hosts."""
        return engine_for(self.root, runroot_for(self.root, "machines").parent)

    def machine(self, host: SandboxHost) -> MachineSpec:
        return MachineSpec(
            name=host.name,
            address=host.address,
            host_dir=self.host_dir(host),
            authorized_keys=self.authorized_keys,
            apt_cache=apt_cache_dir() / host.name,
        )

    def _light(self) -> list[SandboxHost]:
        return [host for host in self.hosts if host.kind == "light"]

    def _machines(self) -> list[SandboxHost]:
        return [host for host in self.hosts if host.kind == "machine"]

    # ------------------------------------------------------------ up

    def up(self, timeout: float = 15.0) -> None:
        """Make keys (once), write every host's files and start each host's sshd; idempotent.

        A listener already running is kept unless its sshd_config changed. Returns once every
        host's port answers with an SSH banner. Starts nothing but the sshd listeners.
        """
        if not os.access(SSHD, os.X_OK):
            raise SandboxError(f"{SSHD} missing (Debian: apt-get install openssh-server)")
        if shutil.which("ssh-keygen") is None:
            raise SandboxError("`ssh-keygen` missing (Debian: apt-get install openssh-client)")
        SSHD_PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        _ensure_key(self.identity_file, "mlops-sandbox deploy")
        _ensure_key(self.reader_identity_file, "mlops-sandbox reader")
        client_public = self.identity_file.with_name(self.identity_file.name + ".pub")
        _write_if_changed(self.authorized_keys, client_public.read_text())
        changed = {host.name: self._write_host_files(host) for host in self._light()}
        changed.update({host.name: self._write_machine_files(host) for host in self._machines()})
        _write_if_changed(
            self.known_hosts,
            "".join(
                known_hosts_line(host.address, host.ssh_port, self._host_public_key(host)) + "\n"
                for host in self.hosts
            ),
        )
        started = {}
        for host in self._light():
            if changed[host.name]:
                self.stop_ssh(host)
            started[host.name] = self._start_listener(host)
        for host in self._light():
            self._wait_for_listener(host, started[host.name], timeout)
        for host in self._light():
            if host.engine == "docker":
                self._start_dockerd(host, timeout)
        self._boot_machines(changed, timeout)

    def _start_dockerd(self, host: SandboxHost, timeout: float) -> None:
        """The host's own Docker Engine, on its own socket, data and exec roots."""
        if not os.access(DOCKERD, os.X_OK):
            raise SandboxError(f"{DOCKERD} missing (Debian: apt-get install docker.io)")
        daemon = self._dockerd(host)
        docker_host = f"unix://{self.docker_socket(host)}"
        if daemon.running_pid() is not None and answers(docker_host):
            return
        daemon.stop()
        self.graphroot(host).mkdir(parents=True, exist_ok=True)
        daemon.start(self._dockerd_argv(host), SSHD_ENV)
        if not wait_until(lambda: answers(docker_host, timeout=1), max(timeout, 30.0), 0.2):
            log = daemon.log_tail()
            daemon.stop()
            raise SandboxError(f"{host.name}: dockerd did not answer on {docker_host}:\n{log}")

    def _write_machine_files(self, host: SandboxHost) -> bool:
        """The machine's host key and sshd drop-in; True if the drop-in changed."""
        spec = self.machine(host)
        _ensure_key(spec.key_dir / "ssh_host_ed25519_key", f"mlops-sandbox host {host.name}")
        _write_if_changed(spec.registries, registries_conf([self.registry]))
        return _write_if_changed(spec.drop_in, sshd_drop_in(host.address, host.ssh_port))

    def _boot_machines(self, changed: Mapping[str, bool], timeout: float) -> None:
        machines = self._machines()
        if not machines:
            return
        try:
            image = self.machines.ensure_image()
            for host in machines:
                if changed[host.name] and self.machines.state(host.name) == "running":
                    self.machines.reboot(host.name)  # it reads its sshd drop-in at boot
                else:
                    self.machines.boot(self.machine(host), image)
        except MachineError as error:
            raise SandboxError(str(error)) from None
        for host in machines:
            self._wait_for_machine(host, max(timeout, 60.0))

    def _wait_for_machine(self, host: SandboxHost, timeout: float) -> float:
        """Seconds until the machine's sshd sends its banner; SandboxError if it does not."""
        started = time.monotonic()
        if not wait_until(lambda: _ssh_answers(host.address, host.ssh_port, 0.5), timeout, 0.1):
            raise SandboxError(
                f"{host.name}: the machine's sshd did not answer on {host.ssh_address} within "
                f"{timeout:.0f} s (its console: {self.machines.container(host.name)})"
            )
        return time.monotonic() - started

    def reboot(self, host: SandboxHost, timeout: float = 60.0) -> float:
        """Reboot a machine host (systemd shuts down, boots again); seconds until its sshd
        answers again. Only machines reboot: a light host is no machine of its own."""
        if host.kind != "machine":
            raise SandboxError(f"{host.name} is a light host: only machine hosts reboot")
        started = time.monotonic()
        try:
            self.machines.reboot(host.name)
        except MachineError as error:
            raise SandboxError(str(error)) from None
        self._wait_for_machine(host, timeout)
        return time.monotonic() - started

    def _host_public_key(self, host: SandboxHost) -> str:
        if host.kind == "machine":
            key = self.machine(host).key_dir / "ssh_host_ed25519_key"
        else:
            key = self._host_key(host)
        return key.with_name(key.name + ".pub").read_text()

    def _write_host_files(self, host: SandboxHost) -> bool:
        """Write the host's key, engine files and sshd_config; True if the sshd_config changed."""
        _ensure_key(self._host_key(host), f"mlops-sandbox host {host.name}")
        engine = self.engine_env(host)
        runroot = self.runroot(host)
        if host.engine == "podman":  # Docker's daemon takes its settings on its command line
            _write_if_changed(Path(engine["CONTAINERS_CONF"]), containers_conf(runroot / "libpod"))
            storage = storage_conf(self.graphroot(host), runroot)
            _write_if_changed(Path(engine["CONTAINERS_STORAGE_CONF"]), storage)
            registries = registries_conf([self.registry])
            _write_if_changed(Path(engine["CONTAINERS_REGISTRIES_CONF"]), registries)
        self.graphroot(host).mkdir(parents=True, exist_ok=True)
        self.home(host).mkdir(parents=True, exist_ok=True)
        config = sshd_config(
            address=host.address,
            port=host.ssh_port,
            host_key=self._host_key(host),
            authorized_keys=self.authorized_keys,
            pid_file=self.host_dir(host) / "sshd.pid",
            environment=engine,
        )
        return _write_if_changed(self._sshd_config_file(host), config)

    def _start_listener(self, host: SandboxHost) -> int:
        listener = self._listener(host)
        running = listener.running_pid()
        if running is not None:
            return running
        if not self._sshd_config_file(host).exists():
            raise SandboxError(f"{host.name}: no sshd_config yet: run up() first")
        if _ssh_answers(host.address, host.ssh_port):
            raise SandboxError(f"{host.name}: {host.ssh_address} is taken by another SSH server")
        # `sshd -t` explains a bad config or key in one line, before anything is started.
        _run([SSHD, "-t", "-f", str(self._sshd_config_file(host))])
        return listener.start(self._sshd_argv(host), SSHD_ENV)

    def _wait_for_listener(self, host: SandboxHost, pid: int, timeout: float) -> None:
        """Wait until the listener `pid` sends its banner; stop it and raise if it does not."""
        # By PID, not `running_pid()`: for the first milliseconds after the spawn the child's
        # command line reads empty, and a listener taken for dead then would be left running.
        wait_until(
            lambda: not _running(pid) or _ssh_answers(host.address, host.ssh_port, timeout=0.5),
            timeout,
            interval=0.05,
        )
        if not (_running(pid) and _ssh_answers(host.address, host.ssh_port)):
            listener = self._listener(host)
            log = listener.log_tail()
            _terminate(pid)
            listener.pid_file.unlink(missing_ok=True)
            raise SandboxError(
                f"{host.name}: sshd did not answer on {host.ssh_address} within "
                f"{timeout:.0f} s:\n{log}"
            )

    # ------------------------------------------------------------ fault injection

    def start_ssh(self, host: SandboxHost, timeout: float = 15.0) -> int:
        """Start this host's sshd listener again (after `stop_ssh`); its PID."""
        pid = self._start_listener(host)
        self._wait_for_listener(host, pid, timeout)
        return pid

    def stop_ssh(self, host: SandboxHost) -> bool:
        """Stop this host's listener only: open sessions, containers and nginx carry on."""
        return self._listener(host).stop()

    def drop_connections(self, host: SandboxHost, timeout: float = 5.0) -> int:
        """Kill this host's per-connection sshd processes, as a dropped network would end them.

        The listener keeps running, so new connections succeed. Commands those sessions
        started keep running, orphaned. Returns how many connections were dropped.
        """
        listener = self._listener(host).running_pid()
        if listener is None:
            return 0
        # Each connection is one child of the listener (its privileged monitor; for non-root
        # users a second sshd under it, which exits with its monitor).
        connections = children_of(listener)
        for pid in connections:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        # The listener reaps them; wait so a caller's next connect sees a settled host.
        wait_until(lambda: not any(_running(pid) for pid in connections), timeout, 0.02)
        return len(connections)

    # ------------------------------------------------------------ status and down

    def status(self) -> list[dict[str, object]]:
        """Per host: name, ssh address, whether its sshd runs, and its PID."""
        result: list[dict[str, object]] = []
        for host in self._machines():
            state = self.machines.state(host.name) if self.machines.storage.exists() else None
            result.append(
                {
                    "name": host.name,
                    "ssh": host.ssh_address,
                    "sshd_running": _ssh_answers(host.address, host.ssh_port),
                    "machine": state or "not made",
                }
            )
        for host in self._light():
            pid = self._listener(host).running_pid()
            result.append(
                {
                    "name": host.name,
                    "ssh": host.ssh_address,
                    "sshd_running": pid is not None,
                    "pid": pid,
                }
            )
        return result

    def down(self, forget: bool = False) -> list[str]:
        """Stop everything each host runs and unmount its storage; what was stopped.

        Per host: its SSH connections and listener (so nothing new arrives), every container
        of its engine, its own nginx (pid file in the deploy's layout), then its storage and
        runroot are unmounted. Keys, known_hosts and images stay, unless `forget` is given:
        then the whole state directory goes. Every host is handled even if one fails; the
        failures are raised together at the end.
        """
        stopped: list[str] = []
        errors: list[str] = []
        try:
            stopped += self._power_off_machines(forget)
        except (MachineError, SandboxError) as error:
            errors.append(str(error))
        for host in self._light():
            dropped = self.drop_connections(host)
            if dropped:
                stopped.append(f"{host.name}: {dropped} ssh connection(s)")
            pid = self._listener(host).running_pid()
            if self.stop_ssh(host):
                stopped.append(f"{host.name}: sshd {pid}")
            try:
                stopped += [
                    f"{host.name}: container {name}" for name in self._remove_containers(host)
                ]
            except SandboxError as error:
                errors.append(f"{host.name}: {error}")
                continue  # keep its runroot: it still describes containers
            nginx = self._stop_nginx(host)
            if nginx is not None:
                stopped.append(f"{host.name}: nginx {nginx}")
            if not self._unmount(host):
                errors.append(f"{host.name}: storage still mounted below {self.graphroot(host)}")
        if not errors and forget:
            self._forget()
        if errors:
            raise SandboxError("down() left things behind:\n" + "\n".join(errors))
        return stopped

    def _power_off_machines(self, forget: bool) -> list[str]:
        """Shut the machines down (their disks stay for the next `up()`), or, with `forget`,
        remove them and their engine's storage."""
        machines = self._machines()
        if not machines or not self.machines.storage.exists():
            return []
        stopped = [
            f"{host.name}: machine powered off"
            for host in machines
            if self.machines.power_off(host.name)
        ]
        if forget:
            self.machines.destroy([host.name for host in machines])
        return stopped

    def _remove_containers(self, host: SandboxHost) -> list[str]:
        """Stop and remove every container of the host's engine; their names."""
        if host.engine == "docker":
            return self._stop_docker(host)
        if not self.graphroot(host).exists() or shutil.which("podman") is None:
            return []  # nothing can have run there
        env = {**os.environ, **self.engine_env(host)}
        names = _run(["podman", "ps", "-a", "--format", "{{.Names}}"], env).split()
        if names:
            _run(["podman", "stop", "-a", "-t", "5"], env)
            _run(["podman", "rm", "-a", "-f"], env)
        return names

    def _stop_docker(self, host: SandboxHost) -> list[str]:
        """Remove a Docker host's containers, then stop its daemon (and the containerd it
        started); the names of the containers."""
        daemon = self._dockerd(host)
        if daemon.running_pid() is None:
            return []
        env = {**os.environ, **self.engine_env(host)}
        names = _run(["docker", "ps", "-a", "--format", "{{.Names}}"], env).split()
        if names:
            _run(["docker", "rm", "--force", *names], env)
        daemon.stop(timeout=20)
        return names

    def _stop_nginx(self, host: SandboxHost) -> int | None:
        return stop_nginx(host.layout)

    def _unmount(self, host: SandboxHost) -> bool:
        """Unmount the host's storage and runroot until nothing remounts; True when clear."""
        graphroot, runroot = self.graphroot(host), self.runroot(host)
        if not graphroot.exists() and not runroot.exists():
            return True  # never ran: nothing can be mounted
        if not unmount_until_clear(graphroot, runroot):
            return False
        shutil.rmtree(runroot, ignore_errors=True)
        # The fleet's directory under /run goes with its last host (rmdir fails while not empty).
        with contextlib.suppress(OSError):
            runroot.parent.rmdir()
        return True

    def _forget(self) -> None:
        if mount_points_below(self.root):
            raise SandboxError(f"not removing {self.root}: something is still mounted below it")
        shutil.rmtree(self.root, ignore_errors=True)
