"""Where the deploy keeps things on a host, under the environment's `deploy_root`.

Everything that must survive a crashed deploy lives on the hosts themselves, so any machine can
read the state, resume or roll back:

    <root>/state.json        live colour, the version per colour, the release history
    <root>/lock.*            the environment's deploy lock: holder record, token, expiry
    <root>/audit.jsonl       append-only audit log
    <root>/journal.json      the switch in progress (from/to), removed when it completes
    <root>/benchmarks.json   the post-deploy benchmark's figures per release (the baselines)
    <root>/env/<colour>.env  the container's settings and secrets (mode 600)
    <root>/nginx/            the site config, the upstream include and (own nginx) its prefix
    <root>/signatures/       the releases' signatures (containers/image lookaside layout), read
                             by the engine when it verifies a pull
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

COLOURS = ("blue", "green")


def other_colour(colour: str) -> str:
    """The idle colour next to `colour`."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}")
    return COLOURS[1 - COLOURS.index(colour)]


@dataclass(frozen=True)
class HostLayout:
    """Paths under one environment's deploy root on a host (POSIX paths: they are remote)."""

    root: PurePosixPath

    @property
    def state_file(self) -> PurePosixPath:
        return self.root / "state.json"

    @property
    def lock_record(self) -> PurePosixPath:
        """Who holds the lock, for what (JSON)."""
        return self.root / "lock.json"

    @property
    def lock_token(self) -> PurePosixPath:
        """The holder's secret-free random token: only the holder renews or releases."""
        return self.root / "lock.token"

    @property
    def lock_expires(self) -> PurePosixPath:
        """Epoch seconds (host clock) after which the lock is free."""
        return self.root / "lock.expires"

    @property
    def lock_mutex(self) -> PurePosixPath:
        """flock(1) target that makes each lock operation atomic."""
        return self.root / ".lock.mutex"

    @property
    def audit_log(self) -> PurePosixPath:
        return self.root / "audit.jsonl"

    @property
    def audit_mutex(self) -> PurePosixPath:
        """flock(1) target: one writer at a time chains its entry to the line before."""
        return self.root / ".audit.mutex"

    @property
    def journal(self) -> PurePosixPath:
        return self.root / "journal.json"

    @property
    def benchmarks(self) -> PurePosixPath:
        return self.root / "benchmarks.json"

    @property
    def env_dir(self) -> PurePosixPath:
        return self.root / "env"

    def env_file(self, colour: str) -> PurePosixPath:
        return self.env_dir / f"{colour}.env"

    @property
    def registry_auth_file(self) -> PurePosixPath:
        """The registry login the pulls use, mode 600 in the 700 env directory: Podman's
        `--authfile`, and the `config.json` of Docker's `--config` directory."""
        return self.env_dir / "registry" / "config.json"

    @property
    def signatures_dir(self) -> PurePosixPath:
        return self.root / "signatures"

    @property
    def nginx_dir(self) -> PurePosixPath:
        """The prefix of an own nginx (`nginx -p`), and where the site files live."""
        return self.root / "nginx"

    @property
    def nginx_conf(self) -> PurePosixPath:
        """The main config of an own nginx (a system nginx has its own)."""
        return self.nginx_dir / "nginx.conf"

    @property
    def nginx_pid(self) -> PurePosixPath:
        return self.nginx_dir / "nginx.pid"

    @property
    def site_conf(self) -> PurePosixPath:
        return self.nginx_dir / "site.conf"

    @property
    def upstream_conf(self) -> PurePosixPath:
        """Included by the site: the one line that says which colour is live."""
        return self.nginx_dir / "upstream.conf"

    @property
    def restore_script(self) -> PurePosixPath:
        """Run once per boot by the restore unit: starts the live colour again."""
        return self.root / "restore-live.sh"

    @property
    def release_keyring(self) -> PurePosixPath:
        """Docker hosts: the environment's release key, for gpgv (binary keyring)."""
        return self.env_dir / "release-key.gpg"
