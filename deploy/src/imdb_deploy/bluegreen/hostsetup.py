"""`fab setup`: prepare every host of an environment, safe to repeat.

Per host: the tools present (installed on Debian, as root, when missing), the directories, the
registry login, the engine's image trust, the nginx site and an upstream, nginx checked and
running. Every file is written only when its content or mode differs from what the host has,
so a second run changes nothing and says so ("nothing changed"); what a run did change is
listed per host.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from imdb_deploy.bluegreen import commands
from imdb_deploy.bluegreen.config import Host
from imdb_deploy.bluegreen.errors import DeployError
from imdb_deploy.bluegreen.runner import on_each
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


class HostSetup:
    """One run of `setup` over the orchestrator's hosts and SSH connections."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.environment = orchestrator.environment

    def run(self) -> dict[str, list[str]]:
        """What changed per host ([]: nothing); DeployError naming the hosts that failed."""
        results, failures = on_each(self.environment.hosts, self.one)
        if failures:
            raise DeployError(f"setup failed: {self.orchestrator._failures_text(failures)}")
        return results

    def put(self, host: Host, path: PurePosixPath, text: str, mode: int = 0o644) -> bool:
        """Write `text` to the host's `path` unless it already holds it with `mode`; whether it
        wrote."""
        runner = self.orchestrator.runners[host.name]
        wanted = f"{hashlib.sha256(text.encode()).hexdigest()} {mode:o}"
        if runner.run(file_state(path)).stdout.strip() == wanted:
            return False
        runner.put_text(path, text, mode=mode)
        return True

    def one(self, host: Host) -> list[str]:
        env, orchestrator = self.environment, self.orchestrator
        runner, layout = orchestrator.runners[host.name], env.layout(host)
        changed: list[str] = []
        missing = runner.run(commands.check_tools()).stdout.split()
        if missing:
            orchestrator.step(host.name, "install", " ".join(missing))
            runner.run(commands.install_packages(missing), timeout_s=900)
            changed.append(f"installed {' '.join(missing)}")
        runner.run(commands.make_directories(layout))
        login = orchestrator.registry_auth()
        if login is not None and self.put(host, layout.registry_auth_file, login, mode=0o600):
            changed.append("registry login")
        if env.signing is not None:
            changed += self.trust(host)
        if env.nginx.mode == "own" and self.put(
            host, layout.nginx_conf, commands.nginx_main_conf(env, layout)
        ):
            changed.append("nginx.conf")
        if self.put(host, commands.site_path(env, layout), commands.site_conf(env, host, layout)):
            changed.append("nginx site")
        if not runner.run(f"test -s {commands.q(layout.upstream_conf)}", check=False).ok:
            state = orchestrator.read_state(host)
            colour = state.live or state.idle
            runner.put_text(layout.upstream_conf, commands.upstream_conf(env, host, colour))
            changed.append(f"upstream ({colour})")
        runner.run(commands.nginx_test(env, layout))
        if runner.run(commands.nginx_ensure_running(env, layout)).stdout.strip() == "started":
            changed.append("nginx started")
        summary = f"changed: {', '.join(changed)}" if changed else "nothing changed"
        orchestrator.step(
            host.name, "ready for deploys", f"nginx on {env.http_address(host)}; {summary}"
        )
        return changed

    def trust(self, host: Host) -> list[str]:
        """The host's engine requires this environment's signature on its image repository:
        the public key, policy.json (merged with the host's own) and the lookaside location.
        Returns what changed."""
        env, orchestrator = self.environment, self.orchestrator
        runner, layout = orchestrator.runners[host.name], env.layout(host)
        if env.signing is None:
            raise DeployError(f"{env.name} names no signing key")
        home = runner.run(commands.home_directory()).stdout
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
            if self.put(host, path, text)
        ]
        orchestrator.step(
            host.name, "trust", f"pulls of {env.image} require a signature by {fingerprint}"
        )
        return changed
