"""A rehearsal's overlay on the committed environment files: only what must differ on this
machine, nothing else, and only towards this machine.

The CD rehearsal deploys through `staging.toml` and `production.toml` themselves; the hosts,
registry and key files they name do not exist here. `MLOPS_ENVIRONMENT_OVERLAY=FILE` names a
TOML file with one table per environment:

    [environments.staging]
    image = "127.0.0.1:5443/mlops-imdb/mlops-imdb-api"   # the same repository, another registry
    ssh = { port = 2222, known_hosts = "/path/known_hosts", identity_file = "/path/key" }
    signing = { public_key = "/path/release.asc" }
    setup = { authorized_key = "/path/key.pub" }
    reader = { identity_file = "/path/read_key" }       # its public half: read_key.pub
    [[environments.staging.hosts]]
    name = "staging-1"                                 # a host the file names, at another address
    address = "127.0.0.41"

Anything else (users, approvals, promote_from, nginx, the app, the lock, the benchmark gate) is
refused, so what the committed files say about keys, users and approvals is what runs; and every
address must be on loopback, so an overlay can only ever point a deploy at this machine.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

OVERLAY_VAR = "MLOPS_ENVIRONMENT_OVERLAY"
# What an overlay may set, per table: where things are here, never what the deploy does.
ALLOWED: Mapping[str, frozenset[str]] = {
    "ssh": frozenset({"port", "known_hosts", "identity_file"}),
    "signing": frozenset({"public_key"}),
    "setup": frozenset({"authorized_key"}),
    "reader": frozenset({"authorized_key", "identity_file"}),
}
HOST_KEYS = frozenset({"name", "address", "ssh_port", "http_address", "app_bind"})


class OverlayError(ValueError):
    """An overlay that sets what it may not, or points somewhere other than this machine."""


def read(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise OverlayError(f"overlay {path}: {error}") from None
    environments = data.get("environments", {})
    if set(data) - {"environments"} or not isinstance(environments, dict):
        raise OverlayError(f"overlay {path}: only [environments.NAME] tables")
    return environments


def _loopback(value: str, where: str) -> None:
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise OverlayError(f"{where}: {value!r} is not on loopback (an overlay points here only)")


def _image(committed: str, overlaid: str, where: str) -> str:
    """The same repository path in another registry, on loopback."""
    registry, _, path = overlaid.partition("/")
    if path != committed.partition("/")[2]:
        raise OverlayError(
            f"{where}: image {overlaid!r} is not the file's repository "
            f"({committed.partition('/')[2]!r}) in another registry"
        )
    _loopback(registry, where)
    return overlaid


def apply(data: dict[str, Any], name: str, overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The environment's raw table with its overlay section applied (a new dict)."""
    section = overlay.get(name)
    if section is None:
        return data
    where = f"overlay of {name}"
    merged = {
        key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()
    }
    for key, value in section.items():
        if key == "image":
            merged["image"] = _image(str(data.get("image", "")), str(value), where)
        elif key == "hosts":
            merged["hosts"] = _hosts(data.get("hosts", []), value, where)
        elif key in ALLOWED and isinstance(value, dict):
            refused = set(value) - ALLOWED[key]
            if refused:
                raise OverlayError(f"{where}: {key}.{sorted(refused)[0]} may not be overlaid")
            merged[key] = {**merged.get(key, {}), **value}
        else:
            raise OverlayError(f"{where}: {key} may not be overlaid")
    return merged


def _hosts(committed: list[dict[str, Any]], overlaid: Any, where: str) -> list[dict[str, Any]]:
    """The file's hosts, each at its overlaid address; the same names, no more, no fewer."""
    if not isinstance(overlaid, list):
        raise OverlayError(f"{where}: hosts is a list of tables")
    by_name = {str(host.get("name")): host for host in overlaid}
    if set(by_name) != {str(host.get("name")) for host in committed}:
        raise OverlayError(
            f"{where}: hosts {sorted(by_name)} are not the file's "
            f"{sorted(str(host.get('name')) for host in committed)}"
        )
    hosts = []
    for host in committed:
        change = by_name[str(host.get("name"))]
        refused = set(change) - HOST_KEYS
        if refused:
            raise OverlayError(f"{where}: hosts.{sorted(refused)[0]} may not be overlaid")
        for key in ("address", "http_address", "app_bind"):
            if key in change:
                _loopback(str(change[key]), f"{where}, {host.get('name')}.{key}")
        hosts.append({**host, **change})
    return hosts
