"""Pinning the hosts' SSH keys with the operator's help (`fab trust --env E`).

The deploy connects only to hosts whose key is in the environment's known_hosts file (the
runner's RejectPolicy). This module fills that file, and only the way an operator would:

- each host's keys are fetched over the network and shown as SHA256 fingerprints (as
  `ssh-keygen -l` prints them);
- a host not pinned yet is written when the operator passes its expected fingerprint (read from
  the host's console or its provider, a channel the network cannot fake) or confirms the one
  shown in a terminal; otherwise nothing is written;
- a host whose key differs from the pinned one is refused, saying what changed and what to do;
  this module never replaces a pinned key.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from imdb_deploy.bluegreen.config import Environment
from imdb_deploy.bluegreen.errors import DeployError

# Key types asked for, one SSH handshake each (a server offers one key per negotiation).
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512")


class HostKeyError(DeployError):
    """A host's key could not be fetched, was not confirmed, or changed."""


@dataclass(frozen=True)
class HostKey:
    kind: str  # as known_hosts names it: ssh-ed25519, ecdsa-sha2-nistp256, ssh-rsa
    base64: str

    @property
    def fingerprint(self) -> str:
        """SHA256:<base64, unpadded>, as `ssh-keygen -l` and sshd's logs print it."""
        digest = hashlib.sha256(base64.b64decode(self.base64)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts names a host: the address, bracketed with its port unless 22."""
    return address if port == 22 else f"[{address}]:{port}"


def fetch_keys(address: str, port: int, timeout_s: float = 10) -> list[HostKey]:
    """The host's keys of each type it has (no authentication: only the key exchange)."""
    keys: list[HostKey] = []
    for kind in KEY_TYPES:
        try:
            sock = socket.create_connection((address, port), timeout=timeout_s)
        except OSError as exc:
            raise HostKeyError(f"cannot reach {address}:{port}: {exc}") from None
        transport = paramiko.Transport(sock)
        try:
            transport.get_security_options().key_types = (kind,)
            transport.start_client(timeout=timeout_s)
            key = transport.get_remote_server_key()
            keys.append(HostKey(key.get_name(), key.get_base64()))
        except (paramiko.SSHException, OSError, EOFError):
            continue  # the host has no key of this type
        finally:
            transport.close()
    if not keys:
        raise HostKeyError(f"{address}:{port} offered no host key of {list(KEY_TYPES)}")
    return keys


def pinned_keys(known_hosts: Path, name: str) -> list[HostKey]:
    """The keys `known_hosts` pins for `name` (none when the file or the host is missing)."""
    if not known_hosts.is_file():
        return []
    keys = []
    for line in known_hosts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and name in fields[0].split(","):
            keys.append(HostKey(fields[1], fields[2]))
    return keys


def pin(known_hosts: Path, name: str, keys: Sequence[HostKey]) -> None:
    """Append `name`'s keys to `known_hosts` (created with mode 600 if missing)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    existing = known_hosts.read_text() if known_hosts.is_file() else ""
    lines = "".join(f"{name} {key.kind} {key.base64}\n" for key in keys)
    separator = "" if not existing or existing.endswith("\n") else "\n"
    known_hosts.write_text(existing + separator + lines)
    if not existing:
        known_hosts.chmod(0o600)


@dataclass(frozen=True)
class Verdict:
    host: str
    name: str  # as known_hosts names it
    offered: list[HostKey]
    result: str  # "pinned already", "pinned now", or "refused: <why>"

    @property
    def refused(self) -> bool:
        return self.result.startswith("refused")


def decide(
    host: str,
    name: str,
    offered: Sequence[HostKey],
    pinned: Sequence[HostKey],
    *,
    expected: Sequence[str],
    confirm: Callable[[str], bool] | None,
    known_hosts: Path,
) -> list[HostKey]:
    """The keys to pin for one host ([]: pinned already), or HostKeyError saying why none.
    With `expected`, only the keys whose fingerprint was expected; with a confirmation, the
    keys the operator was shown."""
    shown = ", ".join(f"{key.kind} {key.fingerprint}" for key in offered)
    if pinned:
        if {(k.kind, k.base64) for k in offered} & {(k.kind, k.base64) for k in pinned}:
            return []
        was = ", ".join(f"{key.kind} {key.fingerprint}" for key in pinned)
        raise HostKeyError(
            f"{host} ({name}): its host key CHANGED. Pinned: {was}; offered now: {shown}. "
            "Either the host was reinstalled or rebuilt, or someone is between you and it. "
            "Check the new fingerprint on the host's console (ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub); only then remove its old line from "
            f"{known_hosts} and run `fab trust` again. Nothing was changed."
        )
    if expected:
        matching = [key for key in offered if key.fingerprint in set(expected)]
        if matching:
            return matching
        raise HostKeyError(
            f"{host} ({name}) offers {shown}, not the expected {', '.join(expected)}: "
            "not pinned (a wrong host, or someone in between)"
        )
    if confirm is not None and confirm(f"{host} ({name}) offers {shown}. Pin it? [y/N] "):
        return list(offered)
    raise HostKeyError(
        f"{host} ({name}) offers {shown}: not pinned. Compare it with the host's own "
        "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on its console), then confirm in a "
        "terminal or pass --fingerprint SHA256:..."
    )


def terminal_confirm(prompt: str) -> bool:
    """Ask on the terminal; no terminal, no confirmation."""
    if not sys.stdin.isatty():
        return False
    return input(prompt).strip().lower() in {"y", "yes"}


def trust(
    environment: Environment,
    expected: Sequence[str] = (),
    confirm: Callable[[str], bool] | None = terminal_confirm,
) -> list[Verdict]:
    """Each host's verdict, in order: its keys pinned in the environment's known_hosts as the
    module says, or why not (a refusal never stops the other hosts)."""
    known_hosts = environment.ssh.known_hosts
    verdicts = []
    for host in environment.hosts:
        port = environment.ssh_port(host)
        name = known_hosts_name(host.address, port)
        offered: list[HostKey] = []
        try:
            offered = fetch_keys(host.address, port, environment.ssh.connect_timeout_s)
            pinned = pinned_keys(known_hosts, name)
            keys = decide(
                host.name, name, offered, pinned,
                expected=expected, confirm=confirm, known_hosts=known_hosts,
            )  # fmt: skip
        except HostKeyError as exc:
            verdicts.append(Verdict(host.name, name, offered, f"refused: {exc}"))
            continue
        if keys:
            pin(known_hosts, name, keys)
        verdicts.append(
            Verdict(host.name, name, offered, "pinned now" if keys else "pinned already")
        )
    return verdicts
