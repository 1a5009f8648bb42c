"""Find a Docker Engine API, or serve one with rootful Podman."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException

from imdb_deploy.engine.processes import ManagedProcess, wait_until
from imdb_deploy.programs import Program

DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"
# Our machines: crun cannot run on their hybrid cgroups, and Podman's default ulimits exceed the
# hard limits, so both are set (see docs/platform notes in the README).
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
"""


def containers_conf(tmp_dir: Path) -> str:
    """containers.conf for one engine of several on this machine (a sandbox host, the fleet's
    machines): the machine's settings, plus a libpod tmp_dir of its own.

    Engines must not share libpod's tmp_dir: it holds the `alive` marker, the exit files and the
    events log. A tmp_dir without the marker makes Podman "refresh" after what it takes for a
    reboot, and with the default SHM locks (one segment for the whole machine) that refresh
    frees every lock, including those held by other hosts' containers. File locks under the
    host's own tmp_dir keep each host's locking to itself, as on separate machines.
    """
    extra = [
        f"tmp_dir = {json.dumps(str(tmp_dir))}",  # a JSON string is a TOML basic string
        'lock_type = "file"',
        # No journald here; a file under tmp_dir keeps `podman events` per host.
        'events_logger = "file"',
    ]
    lines = CONTAINERS_CONF.splitlines()
    if "[engine]" in lines:
        at = lines.index("[engine]") + 1
        lines[at:at] = extra
    else:
        lines += ["", "[engine]", *extra]
    return "\n".join(lines) + "\n"


class EngineError(RuntimeError):
    """No container engine could be found or started."""


@dataclass(frozen=True)
class Engine:
    """A Docker Engine API endpoint; `managed` when we started it (Podman) and should stop it."""

    docker_host: str
    kind: str
    managed: bool

    def client(self, timeout: int = 600) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)


def _unix_socket_accepts(path: str, timeout: float) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def answers(docker_host: str, timeout: int = 5) -> bool:
    """True when a Docker Engine API answers a ping at `docker_host`."""
    # The SDK leaks its socket when a unix connect fails, so probe those by hand first.
    if docker_host.startswith("unix://") and not _unix_socket_accepts(
        docker_host.removeprefix("unix://"), timeout
    ):
        return False
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except DockerException:
        return False


def registries_conf(insecure_registries: Sequence[str]) -> str:
    """registries.conf: short names resolve on docker.io; the local registries speak plain HTTP."""
    blocks = [
        f'[[registry]]\nlocation = "{location}"\ninsecure = true\n'
        for location in insecure_registries
    ]
    return 'unqualified-search-registries = ["docker.io"]\n\n' + "\n".join(blocks)


@dataclass(frozen=True)
class PodmanService:
    """`podman system service` on a socket in `state_dir`, optionally with its own storage."""

    state_dir: Path
    storage_dir: Path | None = None
    podman: Program = "podman"

    @property
    def socket(self) -> Path:
        return self.state_dir / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("podman-service", self.state_dir)

    @property
    def runroot(self) -> Path | None:
        """Podman refuses a runroot path over 50 characters: keep it short, under /tmp."""
        if self.storage_dir is None:
            return None
        digest = hashlib.sha256(str(self.storage_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mlops-podman-{digest}"

    def argv(self) -> list[str]:
        argv = [self.podman]
        if self.storage_dir is not None:
            argv += [f"--root={self.storage_dir / 'root'}", f"--runroot={self.runroot}"]
        return [*argv, "system", "service", "--time=0", self.docker_host]

    @property
    def tmp_dir(self) -> Path:
        """The service's own TMPDIR: Podman leaves a copy of every image loaded through its
        Docker API there (`api_load.tar*`, `digest.txt`), which would otherwise pile up in
        /var/tmp; `stop()` removes it."""
        return self.state_dir / "tmp"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.state_dir / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.state_dir / "registries.conf"),
            "TMPDIR": str(self.tmp_dir),
        }

    def start(self, insecure_registries: Sequence[str] = (), timeout: float = 30.0) -> Engine:
        """Start the service (or reuse the one already running) and wait until it answers."""
        engine = Engine(self.docker_host, kind="podman", managed=True)
        if self.process.running_pid() is not None and answers(self.docker_host):
            return engine
        executable = shutil.which(self.podman)
        if executable is None:
            raise EngineError(
                "no container engine: no Docker API answers and `podman` is not installed "
                "(Debian: apt-get install podman runc)"
            )
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "containers.conf").write_text(CONTAINERS_CONF)
        (self.state_dir / "registries.conf").write_text(registries_conf(insecure_registries))
        self.socket.unlink(missing_ok=True)
        self.process.start(self.argv(), self.env())
        if not wait_until(lambda: self.socket.exists() and answers(self.docker_host), timeout):
            self.process.stop()
            raise EngineError(
                f"podman service did not answer on {self.docker_host} within {timeout:.0f} s:\n"
                + self.process.log_tail()
            )
        return engine

    def stop(self) -> bool:
        stopped = self.process.stop()
        self.socket.unlink(missing_ok=True)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if self.storage_dir is not None and self.runroot is not None:
            # An own storage must not outlive its engine.
            unmount_until_clear(self.storage_dir, self.runroot)
            shutil.rmtree(self.runroot, ignore_errors=True)
        return stopped


def mount_points_below(directory: Path, mountinfo: str | None = None) -> list[Path]:
    """Mount points at or below `directory`, deepest first (from /proc/self/mountinfo)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    root = str(directory.resolve())
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # Spaces and other specials are octal-escaped in mountinfo.
        point = fields[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def unmount_below(directory: Path) -> None:
    """Lazily unmount everything mounted at or below `directory`."""
    umount = shutil.which("umount") or "/bin/umount"
    for point in mount_points_below(directory):
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [umount, "--lazy", str(point)], capture_output=True, check=False
        )


def unmount_until_clear(*directories: Path, attempts: int = 10, pause_s: float = 0.3) -> bool:
    """Unmount everything below `directories` until nothing is mounted there any more; True
    when clear. Podman leaves its overlay mounts behind, and the `podman container cleanup`
    that conmon starts when a container exits can mount the store again a moment later."""
    for _ in range(attempts):
        for directory in directories:
            unmount_below(directory)
        time.sleep(pause_s)
        if not any(mount_points_below(directory) for directory in directories):
            return True
    return False


def find_docker_engine(environ: dict[str, str] | None = None) -> Engine | None:
    """A Docker engine the user already has: DOCKER_HOST if set, else the default socket."""
    environ = dict(os.environ) if environ is None else environ
    docker_host = environ.get("DOCKER_HOST") or DEFAULT_DOCKER_SOCKET
    if answers(docker_host):
        return Engine(docker_host, kind="docker-api", managed=False)
    return None
