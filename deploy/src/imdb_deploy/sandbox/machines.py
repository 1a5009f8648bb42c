"""Sandbox hosts that are whole machines: a systemd-booting container per host.

A light sandbox host is an sshd sharing this machine's file system. A machine host has its own
root file system, users, sudo, systemd units and journal, and it boots and reboots: what a team's
own Debian 12 servers are, minus the hardware. It starts *bare* (Debian with systemd, sshd and
sudo, no container engine, no nginx, no deploy user), so `fab setup` has to do on it what it does
on a new server. Its sshd listens on the host's own loopback address (the machines share this
machine's network, as the light hosts do) and accepts the fleet's key for root and for `admin`,
the passwordless-sudo user a cloud image's first boot makes.

Per machine, under `<state_dir>/hosts/<name>/`:

    sshd.conf                  drop-in: its address, its host key, no passwords
    registries.conf            drop-in: the sandbox registry speaks plain HTTP on loopback
    ssh/ssh_host_ed25519_key   its identity (made once, kept: known_hosts stays valid)
    home/                      its /home (the deploy user's engine storage: native overlay needs
                               a file system that is not itself an overlay)

The machines run in an engine of the fleet's own (`<state_dir>/machines/storage`, runroot under
/run), from an image made once from a cached debootstrap root file system.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imdb_deploy.engine.base_image import RootfsRecipe, default_cache_dir, rootfs_tarball
from imdb_deploy.engine.podman import (
    CONTAINERS_CONF,
    containers_conf,
    unmount_until_clear,
)
from imdb_deploy.engine.processes import run_tool

# A bare Debian 12 server: systemd, sshd and sudo, and nothing a deploy needs.
MACHINE_RECIPE = RootfsRecipe(
    packages=(
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "sudo",
        "iproute2",
        "procps",
        "ca-certificates",
        "curl",
    )
)
# What the simulated hardware adds to the bare system:
# - no host keys of its own (every machine made from the image would share them): each machine's
#   key comes in with its sshd drop-in;
# - a shared root mount, as on a booted server (rootless Podman warns on every command without);
# - the container engine settings this machine's kernel and limits need (see engine.podman):
#   a property of the hardware, not of the server's setup, so they come with the machine.
MACHINE_CONTAINERFILE = """\
FROM {base}
RUN rm -f /etc/ssh/ssh_host_* \\
 && mkdir -p /etc/containers /root/.ssh \\
 && printf '%s\\n' '[Unit]' 'Description=Shared root mount, as on a booted server' \\
      'DefaultDependencies=no' '[Service]' 'Type=oneshot' 'ExecStart=/bin/mount --make-rshared /' \\
      '[Install]' 'WantedBy=local-fs.target' > /etc/systemd/system/make-rshared.service \\
 && systemctl enable make-rshared.service
COPY containers.conf /etc/containers/containers.conf
COPY cloud-admin.sh /usr/local/sbin/cloud-admin
COPY cloud-admin.service /etc/systemd/system/cloud-admin.service
COPY cloud-admin.sudoers /etc/sudoers.d/90-cloud-admin
RUN chmod 755 /usr/local/sbin/cloud-admin && chmod 440 /etc/sudoers.d/90-cloud-admin \\
 && visudo -c -q -f /etc/sudoers.d/90-cloud-admin && systemctl enable cloud-admin.service
"""
# What a cloud image's first boot does (cloud-init's default user): an admin user allowed every
# command through passwordless sudo, logging in with the provider's key, the key root has here too.
# `fab setup` may log in as either, as on real servers.
CLOUD_ADMIN = "admin"
CLOUD_ADMIN_FILES = {
    "cloud-admin.sh": f"""#!/bin/sh
set -e
id -u {CLOUD_ADMIN} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {CLOUD_ADMIN}
install -d -m 700 -o {CLOUD_ADMIN} -g {CLOUD_ADMIN} /home/{CLOUD_ADMIN}/.ssh
install -m 600 -o {CLOUD_ADMIN} -g {CLOUD_ADMIN} /root/.ssh/authorized_keys \\
  /home/{CLOUD_ADMIN}/.ssh/authorized_keys
""",
    "cloud-admin.service": """[Unit]
Description=The cloud image's admin user and its key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/cloud-admin

[Install]
WantedBy=multi-user.target
""",
    "cloud-admin.sudoers": f"{CLOUD_ADMIN} ALL=(ALL) NOPASSWD:ALL\n",
}
# /sbin/init as PID 1; systemd in a container needs the host's cgroups writable.
BOOT_ARGS = (
    "--privileged",
    "--systemd=always",
    "--cgroupns=host",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--network=host",
)
# systemd's own shutdown takes a few seconds; Podman sends SIGRTMIN+3 first, then waits this long.
STOP_TIMEOUT_S = 30


class MachineError(RuntimeError):
    """A sandbox machine could not be made, booted or stopped."""


def _without_engine_warnings(stderr: str) -> str:
    # This machine's cgroups make Podman warn about net_cls on every exec; not the command's.
    return "".join(line for line in stderr.splitlines(True) if "level=warning" not in line)


def sshd_drop_in(address: str, port: int) -> str:
    """The machine's sshd settings, read before Debian's own sshd_config (first value wins)."""
    return (
        "# Written by imdb_deploy.sandbox: this machine's address, identity and logins.\n"
        f"ListenAddress {address}:{port}\n"
        "HostKey /etc/ssh/mlops-sandbox/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "MaxStartups 64\n"
        "MaxSessions 64\n"
    )


def image_reference(recipe: RootfsRecipe = MACHINE_RECIPE) -> str:
    """The machine image's name: changes with the recipe and the hardware's additions."""
    text = (
        recipe.key()
        + MACHINE_CONTAINERFILE
        + CONTAINERS_CONF
        + repr(sorted(CLOUD_ADMIN_FILES.items()))
    )
    return f"localhost/mlops-sandbox-machine:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class MachineSpec:
    """What one machine boots with."""

    name: str
    address: str
    host_dir: Path
    authorized_keys: Path
    apt_cache: Path

    @property
    def drop_in(self) -> Path:
        return self.host_dir / "sshd.conf"

    @property
    def registries(self) -> Path:
        return self.host_dir / "registries.conf"

    @property
    def key_dir(self) -> Path:
        return self.host_dir / "ssh"

    @property
    def home(self) -> Path:
        return self.host_dir / "home"

    def volumes(self) -> list[str]:
        return [
            f"--volume={self.drop_in}:/etc/ssh/sshd_config.d/mlops-sandbox.conf:ro",
            f"--volume={self.key_dir}:/etc/ssh/mlops-sandbox:ro",
            f"--volume={self.registries}:/etc/containers/registries.conf.d/mlops-sandbox.conf:ro",
            f"--volume={self.authorized_keys}:/root/.ssh/authorized_keys:ro",
            f"--volume={self.home}:/home",
            # Debian's packages a machine fetched stay for its next life (apt locks the directory:
            # one per machine).
            f"--volume={self.apt_cache}:/var/cache/apt/archives",
        ]


@dataclass(frozen=True)
class MachineEngine:
    """The Podman that runs a fleet's machines, with storage of its own."""

    state_dir: Path
    runroot: Path
    prefix: str

    @property
    def storage(self) -> Path:
        return self.state_dir / "storage"

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.state_dir / "containers.conf")}

    def containers_conf(self) -> str:
        """The machines' engine keeps its libpod state (locks, exit files, the reboot marker)
        to itself, as the sandbox hosts' engines do: see `containers_conf`."""
        return containers_conf(self.runroot / "libpod")

    def argv(self, *args: str) -> list[str]:
        """podman on this engine's storage, with `args`."""
        podman = shutil.which("podman") or "podman"
        return [podman, f"--root={self.storage}", f"--runroot={self.runroot}", *args]

    def podman(self, *args: str, timeout: float = 120.0) -> str:
        return run_tool(self.argv(*args), error=MachineError, env=self.env(), timeout=timeout)

    def container(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def state(self, name: str) -> str | None:
        """`running`, `exited`, ... of the machine's container; None when it was never made."""
        made = self.podman(
            "ps", "-a", "--filter", f"name=^{self.container(name)}$", "--format", "{{.ID}}"
        ).split()
        if not made:
            return None
        return self.podman(
            "container", "inspect", "--format", "{{.State.Status}}", self.container(name)
        ).strip()

    def ensure_image(self, cache_dir: Path | None = None) -> str:
        """The machine image, made once: debootstrap's cached tarball, imported, then the
        hardware's additions built on top."""
        reference = image_reference()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "containers.conf").write_text(self.containers_conf())
        if self.podman("images", "-q", reference).strip():
            return reference
        tarball = rootfs_tarball(MACHINE_RECIPE, cache_dir or default_cache_dir())
        base = f"localhost/mlops-sandbox-machine-base:{MACHINE_RECIPE.key()}"
        self.podman("import", str(tarball), base, timeout=600)
        with tempfile.TemporaryDirectory(dir=self.state_dir) as context:
            (Path(context) / "Containerfile").write_text(MACHINE_CONTAINERFILE.format(base=base))
            (Path(context) / "containers.conf").write_text(CONTAINERS_CONF)
            for name, text in CLOUD_ADMIN_FILES.items():
                (Path(context) / name).write_text(text)
            self.podman("build", "--pull=never", "-t", reference, context, timeout=600)
        self.podman("rmi", base)
        return reference

    def boot(self, spec: MachineSpec, image: str) -> None:
        """Power the machine on: start it, or make it first (a bare machine)."""
        state = self.state(spec.name)
        if state == "running":
            return
        if state is not None:
            self.podman("start", self.container(spec.name))
            return
        for directory in (spec.home, spec.apt_cache):
            directory.mkdir(parents=True, exist_ok=True)
        self.podman(
            "run",
            "--detach",
            f"--name={self.container(spec.name)}",
            f"--hostname={spec.name}",
            f"--add-host={spec.name}:{spec.address}",
            f"--stop-timeout={STOP_TIMEOUT_S}",
            *BOOT_ARGS,
            *spec.volumes(),
            image,
            "/sbin/init",
        )

    def reboot(self, name: str) -> None:
        """systemd shuts the machine down and it boots again, as `reboot` would."""
        self.podman("restart", f"--time={STOP_TIMEOUT_S}", self.container(name), timeout=120)

    def power_off(self, name: str) -> bool:
        """Shut the machine down (its disk stays); True if it was running."""
        if self.state(name) != "running":
            return False
        self.podman("stop", f"--time={STOP_TIMEOUT_S}", self.container(name), timeout=120)
        return True

    def run_in(self, name: str, command: str) -> str:
        """A command on the machine's console, as root (a look behind SSH); its output, stderr
        included (MachineError with it when the command fails)."""
        argv = [*self.argv("exec", self.container(name), "sh", "-c", command)]
        done = subprocess.run(  # noqa: S603 - fixed argv; the command is the caller's own
            argv, env=self.env(), capture_output=True, text=True, check=False, timeout=120
        )
        output = done.stdout + _without_engine_warnings(done.stderr)
        if done.returncode != 0:
            raise MachineError(
                f"on {name}'s console, {command!r} exited {done.returncode}:\n{output}"
            )
        return output

    def destroy(self, names: list[str]) -> None:
        """Remove the machines, their disks and the engine's storage."""
        if self.storage.exists() and shutil.which("podman") is not None:
            for name in names:
                if self.state(name) is not None:
                    self.podman("rm", "--force", f"--time={STOP_TIMEOUT_S}", self.container(name))
        if not unmount_until_clear(self.storage, self.runroot):
            raise MachineError(f"machine storage still mounted below {self.storage}")
        shutil.rmtree(self.runroot, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def engine_for(state_dir: Path, runroot_base: Path) -> MachineEngine:
    """The fleet's machine engine: storage under the state directory, runroot beside the light
    hosts' under /run, containers named after the fleet (two fleets never share a name)."""
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    return MachineEngine(state_dir / "machines", runroot_base / "machines", f"sandbox-{digest}")


def apt_cache_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "machine-apt"
