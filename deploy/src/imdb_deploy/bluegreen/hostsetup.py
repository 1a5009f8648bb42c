"""`fab setup`: prepare every host of an environment, safe to repeat.

Per host: the tools present (installed on Debian, as root, when missing), on a bare host the
deploy user and what it may do as root, the directories, the registry login, the engine's image
trust, the nginx site and an upstream, nginx checked and running, and the unit that starts the
live colour after a boot. Every file is written only when its content or mode differs from
what the host has, so a second run changes nothing and says so ("nothing changed"); what a run
did change is listed per host.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import READ_KEY_VAR, SSH_KEY_VAR, Host
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.runner import AsRoot, HostRunner, Shell, on_each, private_key
from imdb_deploy.supply_chain import signing

if TYPE_CHECKING:
    from imdb_deploy.bluegreen.orchestrator import Orchestrator


def file_state(path: PurePosixPath) -> str:
    """Prints `<sha256> <octal mode>` of a host's file, nothing when it is missing."""
    target = commands.q(path)
    return (
        f"if [ -f {target} ]; then "
        f'echo "$(sha256sum < {target} | cut -d" " -f1) $(stat -c %a {target})"; fi'
    )


def _wanted(content: str | bytes, mode: int) -> str:
    """What `file_state` prints for a file holding `content` with `mode`."""
    data = content.encode() if isinstance(content, str) else content
    return f"{hashlib.sha256(data).hexdigest()} {mode:o}"


def put(runner: Shell, path: PurePosixPath, text: str, mode: int = 0o644) -> bool:
    """Write `text` to the host's `path` unless it already holds it with `mode`; whether it
    wrote."""
    if runner.run(file_state(path)).stdout.strip() == _wanted(text, mode):
        return False
    runner.put_text(path, text, mode=mode)
    return True


class HostSetup:
    """One run of `setup` over the orchestrator's hosts and SSH connections.

    With `setup.user` named (root, or an admin with passwordless sudo as cloud images have), a
    bare host is prepared in three phases: as root, the packages, the deploy user (its key,
    lingering systemd instance, sudoers file checked by visudo) and the deploy root it owns; as
    the deploy user, its directories, registry login, image trust and restore unit; as root
    again, the nginx site, checked and running. Without it, the deploy user (root then) does all
    of it.
    """

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.environment = orchestrator.environment
        admin = self.environment.as_setup_user()
        self.admins: dict[str, AsRoot] = (
            {}
            if admin is None
            else {host.name: AsRoot(orchestrator.runner_for(admin, host)) for host in admin.hosts}
        )

    def run(self) -> dict[str, list[str]]:
        """What changed per host ([]: nothing); DeployError naming the hosts that failed.

        First what a bare host needs before anyone can deploy to it (packages, the deploy user
        and its root: nothing to lock yet); then, under the environment's deploy lock, like a
        release, what deploys rely on (the deploy side, nginx, the restore unit)."""
        orchestrator = self.orchestrator
        try:
            provisioned, failures = on_each(self.environment.hosts, self.provision)
            if not failures:
                outcome = orchestrator.outcome
                if outcome is None:
                    raise DeployError("setup runs as an action (Orchestrator.setup)")
                with orchestrator.locked(outcome):
                    orchestrator._confirm_lock("setting up the hosts")
                    configured, failures = on_each(
                        self.environment.hosts, lambda h: self.configure(h, provisioned[h.name])
                    )
        finally:
            for runner in self.admins.values():
                runner.close()
        if failures:
            raise DeployError(f"setup failed: {orchestrator._failures_text(failures)}")
        return {name: provisioned[name] + configured[name] for name in provisioned}

    def provision(self, host: Host) -> list[str]:
        """As root (or, without a setup user, as the deploy user): the packages, the deploy
        user and its root, the reader."""
        env = self.environment
        deploy = self.orchestrator.runners[host.name]
        admin = self.admins.get(host.name)
        if env.reader is not None and admin is None and env.sudo:  # before changing anything
            raise DeployError(
                f"{host.name}: only root makes the reader {env.reader.user!r}: name setup.user "
                "(root, or a user with passwordless sudo)"
            )
        changed = self.system(host, admin) if admin is not None else self.tools(host, deploy)
        return changed + self.reader(host, admin or deploy)

    def configure(self, host: Host, provisioned: list[str]) -> list[str]:
        """What deploys rely on: the deploy side, nginx, the restore unit (the step that ends
        it names what `provision` changed too)."""
        env, orchestrator = self.environment, self.orchestrator
        deploy = orchestrator.runners[host.name]
        admin = self.admins.get(host.name)
        home = deploy.run(commands.home_directory()).stdout  # the deploy user's, asked once
        changed = self.deploy_side(host, deploy, home)
        changed += self.nginx(host, admin or deploy)
        changed += self.restore(host, deploy, home)
        everything = [*provisioned, *changed]
        summary = f"changed: {', '.join(everything)}" if everything else "nothing changed"
        orchestrator.step(
            host.name, "ready for deploys", f"nginx on {env.http_address(host)}; {summary}"
        )
        return changed

    def tools(self, host: Host, runner: Shell) -> list[str]:
        """The commands the deploy runs, installed from Debian's packages when missing."""
        missing = runner.run(commands.check_tools(commands.host_packages(self.environment))).stdout
        if not missing.split():
            return []
        self.orchestrator.step(host.name, "install", " ".join(missing.split()))
        runner.run(commands.install_packages(missing.split()), timeout_s=900)
        return [f"installed {' '.join(missing.split())}"]

    def system(self, host: Host, admin: AsRoot) -> list[str]:
        """As root (or through the admin's sudo): packages, the deploy user with its key and
        sudoers file, its deploy root."""
        env = self.environment
        user = env.deploy_user
        how = "through sudo" if admin.via_sudo() else "logged in as root"
        self.orchestrator.step(host.name, "setup", f"as {env.setup.user} ({how})")
        changed = self.tools(host, admin)
        if admin.run(commands.ensure_user(user)).stdout.strip() == "created":
            changed.append(f"user {user}")
        home = PurePosixPath(admin.run(commands.user_home(user)).stdout.strip())
        admin.run(commands.own_ssh_dir(user, home))
        keys = home / ".ssh" / "authorized_keys"
        if put(admin, keys, self.deploy_public_key(), mode=0o600):
            changed.append("deploy key")
        admin.run(commands.own_ssh_dir(user, home))  # the key file too: sshd reads it as the user
        if admin.run(commands.enable_linger(user)).stdout.strip() == "enabled":
            changed.append("linger")
        if env.sudo and self.sudoers(admin):
            changed.append("sudoers")
        admin.run(commands.own_directory(env.deploy_root, user))
        # The docker group is root-equivalent (it can run any container): Docker Engine has
        # nothing narrower, unlike rootless Podman.
        docker_user = env.engine == "docker" and env.sudo
        if docker_user and admin.run(commands.join_group(user, "docker")).stdout.strip():
            changed.append(f"{user} in group docker")
        return changed

    def deploy_public_key(self) -> str:
        """The deploy user's public key: setup.authorized_key, the identity file's .pub, or the
        public half of the private key in the deployer's environment (CD's secret)."""
        return self.public_key(
            "deploy", self.environment.deploy_key_file(), SSH_KEY_VAR, "setup.authorized_key"
        )

    def public_key(self, role: str, path: Path | None, variable: str, setting: str) -> str:
        """The public key of the `role` login: the file named, else the public half of the
        private key in the deployer's `variable`."""
        if path is not None:
            try:
                return path.read_text().strip() + "\n"
            except OSError as error:
                raise DeployError(f"the {role} user's public key: {error}") from None
        private = self.orchestrator.environ.get(variable)
        if not private:
            raise DeployError(f"no public key for the {role} user: set {setting} or ${variable}")
        key = private_key(private)
        return f"{key.get_name()} {key.get_base64()} mlops-imdb {role}\n"

    def reader(self, host: Host, root: Shell) -> list[str]:
        """As root: the reader, a login of its own whose one key may run one command, the one
        that prints the release state; its authorized_keys root's, so the restriction is
        setup's to change, not the reader's."""
        env = self.environment
        reader = env.reader
        if reader is None:
            return []
        changed = []
        if root.run(commands.ensure_user(reader.user)).stdout.strip() == "created":
            changed.append(f"user {reader.user}")
        home = PurePosixPath(root.run(commands.user_home(reader.user)).stdout.strip())
        root.run(commands.root_owned_ssh_dir(home))
        public = self.public_key("reader", reader.key_file(), READ_KEY_VAR, "reader.authorized_key")
        keys = commands.reader_authorized_keys(env.layout(host), public)
        if put(root, home / ".ssh" / "authorized_keys", keys, mode=0o644):
            changed.append("reader key")
        root.run(commands.root_owned_ssh_dir(home))
        return changed

    def docker_trust(self, host: Host, public_key: Path) -> list[str]:
        """Docker hosts: the release key as gpgv's keyring; the deploy checks each release's
        signature with it before the pull (`commands.verify_signature`)."""
        env, orchestrator = self.environment, self.orchestrator
        runner, layout = orchestrator.runners[host.name], self.environment.layout(host)
        fingerprint = orchestrator.trusted_key()
        keyring = signing.dearmor(public_key.read_text())
        changed = []
        if runner.run(file_state(layout.release_keyring)).stdout.strip() != _wanted(keyring, 0o644):
            runner.run(commands.write_binary(layout.release_keyring, keyring))
            changed.append("release keyring")
        orchestrator.step(
            host.name, "trust", f"releases of {env.image} must verify with {fingerprint} (gpgv)"
        )
        return changed

    def sudoers(self, admin: AsRoot) -> bool:
        """The deploy user's sudoers file, installed only if visudo accepts it; whether it
        changed."""
        text, target = commands.sudoers(self.environment), commands.sudoers_path(
            self.environment.deploy_user
        )
        if admin.run(file_state(target)).stdout.strip() == _wanted(text, 0o440):
            return False
        # A name with a '.' is one sudo skips: the file is inert until visudo has passed it.
        staged = target.with_name(f".{target.name}.staged")
        admin.put_text(staged, text, mode=0o440)
        admin.run(commands.install_sudoers(staged, target))
        return True

    def deploy_side(self, host: Host, runner: HostRunner, home: str) -> list[str]:
        """As the deploy user: directories, registry login, image trust, a first upstream."""
        env, orchestrator = self.environment, self.orchestrator
        layout = env.layout(host)
        changed: list[str] = []
        runner.run(commands.make_directories(layout))
        if env.engine == "podman" and env.sudo:
            changed += self.rootless_storage(host, runner, home)
        login = orchestrator.registry_auth()
        if login is not None and put(runner, layout.registry_auth_file, login, mode=0o600):
            changed.append("registry login")
        if env.signing is not None:
            changed += self.trust(host, home)
        if env.nginx.mode == "own":
            changed += self.first_upstream(host, runner)
        return changed

    def first_upstream(self, host: Host, runner: Shell) -> list[str]:
        """nginx's upstream, when there is none yet: the live colour (a host set up again keeps
        serving), else the idle one. An own nginx's is the deploy user's; the system nginx's is
        root's (`runner` then logs in as root, or through the admin's sudo)."""
        env = self.environment
        path = commands.upstream_path(env, env.layout(host))
        if runner.run(f"test -s {commands.q(path)}", check=False).ok:
            return []
        state = self.orchestrator.read_state(host)
        colour = state.live or state.idle
        runner.run(f"mkdir -p {commands.q(path.parent)}")
        runner.put_text(path, commands.upstream_conf(env, host, colour))
        return [f"upstream ({colour})"]

    def rootless_storage(self, host: Host, runner: HostRunner, home: str) -> list[str]:
        """The deploy user's engine on native overlay, set before its first pull; a storage.conf
        of the operator's own, or images already in vfs, are left as they are and said."""
        state = runner.run(commands.rootless_storage_state(home)).stdout.strip()
        if state == "own":
            self.orchestrator.step(host.name, "storage", "kept the deploy user's own storage.conf")
            return []
        if state == "vfs":
            self.orchestrator.step(
                host.name,
                "storage",
                "images are in vfs storage (a full copy per layer): `podman system reset` as "
                f"{self.environment.deploy_user} deletes them, then setup moves it to overlay",
            )
            return []
        path = commands.rootless_storage_conf(home)
        runner.run(f"mkdir -p {commands.q(path.parent)}")
        return ["storage overlay"] if put(runner, path, commands.ROOTLESS_STORAGE_CONF) else []

    def nginx(self, host: Host, runner: Shell) -> list[str]:
        """The site (and an own nginx's whole config), checked, and nginx running."""
        env = self.environment
        layout = env.layout(host)
        changed: list[str] = []
        if env.nginx.mode == "own" and put(
            runner, layout.nginx_conf, commands.nginx_main_conf(env, layout)
        ):
            changed.append("nginx.conf")
        system = env.nginx.mode == "system"
        if system and runner.run(commands.disable_default_site()).stdout.strip() == "removed":
            changed.append("nginx default site removed")
        if system:
            # Root's: the helper the deploy user switches colours with, and the upstream it
            # writes (the deploy user writes nothing the system nginx reads).
            helper = commands.nginx_helper_path(env)
            if put(runner, helper, commands.nginx_helper(env, host), mode=0o755):
                changed.append("nginx helper")
            changed += self.first_upstream(host, runner)
        site = commands.site_path(env, layout)
        if put(runner, site, commands.site_conf(env, host, layout)):
            changed.append("nginx site")
        runner.run(commands.nginx_test(env, layout))
        if runner.run(commands.nginx_ensure_running(env, layout)).stdout.strip() == "started":
            changed.append("nginx started")
        return changed

    def restore(self, host: Host, runner: HostRunner, home: str) -> list[str]:
        """The unit that starts the live colour after a boot (systemd hosts only): the deploy
        user's own, or a system unit when it is root."""
        env, layout = self.environment, self.environment.layout(host)
        if env.shares_this_machine:
            self.orchestrator.step(
                host.name, "restore", "a light sandbox host has no boot of its own: no unit"
            )
            return []
        if not runner.run(commands.HAS_SYSTEMD, check=False).ok:
            self.orchestrator.step(
                host.name, "restore", "no systemd: nothing restarts the live colour at boot"
            )
            return []
        user_unit = bool(env.sudo)
        directory = commands.unit_directory(home, user_unit=user_unit)
        unit = f"mlops-imdb-{env.name}.service"
        runner.run(f"mkdir -p {commands.q(directory)}")
        changed = []
        script = commands.restore_script(env, layout, host)
        if put(runner, layout.restore_script, script, mode=0o755):
            changed.append("restore script")
        text = commands.restore_unit(env, layout.restore_script, user_unit=user_unit)
        if put(runner, directory / unit, text):
            changed.append("restore unit")
        runner.run(commands.enable_unit(directory, unit, user_unit=user_unit))
        return changed

    def trust(self, host: Host, home: str) -> list[str]:
        """The host's engine requires this environment's signature on its image repository:
        the public key, policy.json (merged with the host's own) and the lookaside location.
        Returns what changed."""
        env, orchestrator = self.environment, self.orchestrator
        runner, layout = orchestrator.runners[host.name], env.layout(host)
        if env.signing is None:
            raise DeployError(f"{env.name} names no signing key")
        if env.engine == "docker":
            return self.docker_trust(host, env.signing.public_key)
        files = commands.TrustFiles(commands.trust_config_dir(env.signing.containers_config, home))
        fingerprint = orchestrator.trusted_key()  # read and checked once for all hosts
        runner.run(commands.make_trust_directories(files, layout))
        key = env.signing.public_key.read_text()
        existing = runner.run(commands.read_file(files.policy)).stdout
        policy = signing.merged_policy(existing, env.image, files.public_key(env))
        registries_d = signing.registries_d(env.image, layout.signatures_dir)
        changed = [
            name
            for name, path, text in (
                ("signing key", files.public_key(env), key),
                ("policy.json", files.policy, policy),
                ("registries.d", files.registries_d(env), registries_d),
            )
            if put(runner, path, text)
        ]
        orchestrator.step(
            host.name, "trust", f"pulls of {env.image} require a signature by {fingerprint}"
        )
        return changed
