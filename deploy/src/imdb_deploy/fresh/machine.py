"""The fresh machine: Debian's minimal base that boots, in an engine of its own.

Its root file system is debootstrap's minbase plus what booting takes (systemd, systemd-sysv,
dbus) and the apt sources Debian's installer writes; nothing the project needs. It boots as a
privileged container (systemd as PID 1, this machine's cgroups and limits) in the run's network
namespace, with plain directories of this machine for its container storage and its /work (so
nested engines get a real file system, and the run's reports are readable from outside).
Commands run on its console as root, their output streamed line by line.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imdb_deploy.engine.base_image import RootfsRecipe, default_cache_dir, rootfs_tarball
from imdb_deploy.sandbox.machines import MachineEngine, MachineError

# Debian's minimal base, and what it takes to boot: no sudo, no git, no make, no Python.
FRESH_RECIPE = RootfsRecipe(packages=("systemd", "systemd-sysv", "dbus"))
# debootstrap lists only the release itself; Debian's installer adds its updates and security.
APT_SOURCES = """\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://security.debian.org/debian-security bookworm-security main
"""
CONTAINERFILE = """\
FROM {base}
COPY sources.list /etc/apt/sources.list
RUN echo fresh > /etc/hostname
"""
BOOT_TIMEOUT_S = 60
BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Volume:
    source: Path
    target: str
    read_only: bool = False

    def arg(self) -> str:
        return f"--volume={self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class FreshMachine:
    engine: MachineEngine
    name: str = "fresh"

    @property
    def container(self) -> str:
        return self.engine.container(self.name)

    def image(self, cache_dir: Path | None = None) -> str:
        """The machine's image, made once: the cached minbase tarball, with the apt sources."""
        self.engine.state_dir.mkdir(parents=True, exist_ok=True)
        (self.engine.state_dir / "containers.conf").write_text(self.engine.containers_conf())
        reference = f"localhost/mlops-fresh:{FRESH_RECIPE.key()}"
        if self.engine.podman("images", "-q", reference).strip():
            return reference
        tarball = rootfs_tarball(FRESH_RECIPE, cache_dir or default_cache_dir())
        base = f"localhost/mlops-fresh-base:{FRESH_RECIPE.key()}"
        self.engine.podman("import", str(tarball), base, timeout=600)
        context = self.engine.state_dir / "context"
        context.mkdir(exist_ok=True)
        (context / "Containerfile").write_text(CONTAINERFILE.format(base=base))
        (context / "sources.list").write_text(APT_SOURCES)
        self.engine.podman("build", "--pull=never", "-t", reference, str(context), timeout=600)
        self.engine.podman("rmi", base)
        return reference

    def boot(self, image: str, netns: str, volumes: Sequence[Volume]) -> float:
        """Power on in the namespace at `netns`; seconds until systemd says it is up."""
        started = time.monotonic()
        self.engine.podman(
            "run", "--detach", f"--name={self.container}", "--hostname=fresh",
            "--privileged", "--systemd=always", "--cgroupns=host",
            "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw", f"--network=ns:{netns}",
            # This machine's limits: the outer engine's defaults are far below what the
            # pipeline's own engines, sshd and servers open.
            "--ulimit=host", *(volume.arg() for volume in volumes), image, "/sbin/init",
        )  # fmt: skip
        deadline = started + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            state = self.console("systemctl is-system-running || true", check=False).strip()
            if state in {"running", "degraded"}:
                return time.monotonic() - started
            time.sleep(0.5)
        raise MachineError(f"the fresh machine did not boot in {BOOT_TIMEOUT_S} s ({state!r})")

    def console(self, command: str, *, check: bool = True) -> str:
        """A short command as root; its output (MachineError when it fails and `check`)."""
        argv = self.engine.argv("exec", self.container, "sh", "-c", command)
        done = subprocess.run(  # noqa: S603 - fixed argv; the command is ours
            argv, env=self.engine.env(), capture_output=True, text=True, check=False, timeout=600
        )
        if check and done.returncode != 0:
            raise MachineError(
                f"on the fresh machine, {command!r} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done.stdout

    def stream(
        self,
        command: str,
        *,
        env: Mapping[str, str],
        cwd: str,
        on_line: Callable[[str], None],
    ) -> int:
        """A long command as root in a login shell, each output line handed to `on_line` as it
        comes; its exit status."""
        variables = [f"--env={name}={value}" for name, value in env.items()]
        script = f"cd {shlex.quote(cwd)} && {command}"
        argv = self.engine.argv("exec", *variables, self.container, "bash", "--login", "-c", script)
        with subprocess.Popen(  # noqa: S603 - fixed argv; the command is the README's
            argv,
            env=self.engine.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as process:
            for line in process.stdout or ():
                on_line(line.rstrip("\n"))
            return process.wait()

    def destroy(self) -> None:
        """Power off and remove the machine, its engine's storage and state."""
        self.engine.destroy([self.name])


def binfmt_entries(root: Path = BINFMT) -> set[str]:
    """The kernel's binfmt_misc handlers (global: a privileged guest registering one registers
    it here too, as binfmt-support's service does when it starts)."""
    if not (root / "register").exists():
        return set()
    return {path.name for path in root.iterdir() if path.name not in {"register", "status"}}


def remove_binfmt_entries(names: set[str], root: Path = BINFMT) -> None:
    for name in sorted(names):
        (root / name).write_text("-1\n")
