"""The fresh machine's network: a namespace of its own that reaches only the package registries.

Its own namespace gives it its own loopback, so its sandbox hosts take 127.0.0.21, 127.0.0.22, ...
and its registry 127.0.0.1:5000 without meeting this machine's. A veth pair joins it to this
machine; nftables (a table of this run's own) forwards and masquerades only what goes to the
registries' addresses on 80/443 and to the DNS resolvers on 53, drops everything else it sends,
and keeps it off this machine's own listeners. Commands are built as data (tested as such) and
run by `Isolation.up`/`down`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from imdb_deploy.engine.processes import run_tool
from imdb_deploy.programs import Program

# What a newcomer's commands download from: Debian's packages and PyPI (uv, nox, the lock).
REGISTRIES = ("deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP: Program = "ip"
NFT: Program = "nft"


class NetworkError(RuntimeError):
    """The namespace or its rules could not be made."""


def resolve(names: Iterable[str]) -> list[str]:
    """The IPv4 addresses the names resolve to here, sorted (the rules name addresses)."""
    found: set[str] = set()
    for name in names:
        try:
            infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        except OSError as error:
            raise NetworkError(f"cannot resolve {name}: {error}") from error
        found.update(str(info[4][0]) for info in infos)
    return sorted(found, key=ipaddress.IPv4Address)


def resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The IPv4 name servers this machine asks (the namespace shares its resolv.conf)."""
    servers = []
    for line in resolv_conf.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            with contextlib.suppress(ValueError):
                servers.append(str(ipaddress.IPv4Address(words[1])))
    return servers


@dataclass(frozen=True)
class Isolation:
    """One run's namespace, veth pair and nftables table (names short enough for Linux)."""

    name: str  # the namespace; the table and interfaces are named after it
    subnet: str = "10.231.0.0/30"

    @property
    def table(self) -> str:
        return self.name.replace("-", "_")

    @property
    def host_side(self) -> str:
        return f"{self.name[:11]}-h"

    @property
    def inner_side(self) -> str:
        return f"{self.name[:11]}-n"

    @property
    def addresses(self) -> tuple[str, str]:
        """(this machine's end, the namespace's end) of the /30."""
        network = ipaddress.IPv4Network(self.subnet)
        host, inner = list(network.hosts())[:2]
        return str(host), str(inner)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    def up_commands(self) -> list[list[str]]:
        host, inner = self.addresses
        prefix = ipaddress.IPv4Network(self.subnet).prefixlen
        ns = [IP, "-n", self.name]
        return [
            [IP, "netns", "add", self.name],
            [IP, "link", "add", self.host_side, "type", "veth", "peer", "name", self.inner_side],
            [IP, "link", "set", self.inner_side, "netns", self.name],
            [IP, "addr", "add", f"{host}/{prefix}", "dev", self.host_side],
            [IP, "link", "set", self.host_side, "up"],
            [*ns, "addr", "add", f"{inner}/{prefix}", "dev", self.inner_side],
            [*ns, "link", "set", self.inner_side, "up"],
            [*ns, "link", "set", "lo", "up"],
            [*ns, "route", "add", "default", "via", host],
        ]

    def ruleset(self, allowed: Sequence[str], dns: Sequence[str]) -> str:
        """nftables: forward (and masquerade) the namespace's traffic to the registries on
        80/443 and to the resolvers on 53 only; replies back in; nothing to this machine."""
        veth = self.host_side

        def addresses(values: Sequence[str]) -> str:
            return "{ " + ", ".join(values) + " }"

        return f"""\
table inet {self.table} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{veth}" ip daddr {addresses(allowed)} tcp dport {{ 80, 443 }} accept
        iifname "{veth}" ip daddr {addresses(dns)} meta l4proto {{ tcp, udp }} th dport 53 accept
        iifname "{veth}" counter drop
        oifname "{veth}" ct state established,related accept
        oifname "{veth}" counter drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{veth}" ct state established,related accept
        iifname "{veth}" counter drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {self.subnet} oifname != "{veth}" masquerade
    }}
}}
"""

    def down_commands(self) -> list[list[str]]:
        """Each undoes one part, whatever else is left (the veth goes with the namespace)."""
        return [[NFT, "delete", "table", "inet", self.table], [IP, "netns", "del", self.name]]

    def exists(self) -> bool:
        return Path(self.netns_path).exists()

    def up(self, allowed: Sequence[str], dns: Sequence[str]) -> str:
        """Make the namespace and its rules; returns the ip_forward value to restore."""
        if self.exists():
            raise NetworkError(
                f"network namespace {self.name} exists: an earlier run was interrupted "
                "(`python -m imdb_deploy.fresh down` removes what it left)"
            )
        for argv in self.up_commands():
            run_tool(argv, error=NetworkError)
        run_tool([NFT, "-f", "-"], error=NetworkError, stdin=self.ruleset(allowed, dns))
        before = IP_FORWARD.read_text().strip()
        IP_FORWARD.write_text("1\n")
        return before

    def down(self, ip_forward: str | None = None) -> list[str]:
        """Remove what `up` made; the parts that were not there are named, not an error."""
        absent = []
        for argv in self.down_commands():
            try:
                run_tool(argv, error=NetworkError)
            except NetworkError:
                absent.append(" ".join(argv[:3]))
        if ip_forward is not None:
            IP_FORWARD.write_text(f"{ip_forward}\n")
        return absent
