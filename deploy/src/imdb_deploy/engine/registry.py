"""A local container registry (CNCF distribution, Debian's `docker-registry`) on loopback."""

from __future__ import annotations

import http.client
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from imdb_deploy.engine.processes import ManagedProcess, wait_until
from imdb_deploy.programs import Program

DEFAULT_REGISTRY_ADDRESS = "127.0.0.1:5000"


class RegistryError(RuntimeError):
    """The local registry could not be started."""


def registry_config(storage_dir: Path, address: str) -> str:
    """The registry's YAML configuration: filesystem storage, deletes allowed (for pruning)."""
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {
            "filesystem": {"rootdirectory": str(storage_dir)},
            "delete": {"enabled": True},
        },
        "http": {"addr": address},
    }
    return yaml.safe_dump(config, sort_keys=False)


def answers(address: str, timeout: float = 2.0) -> bool:
    """True when the registry's API root answers 200 at `address` (host:port)."""
    host, _, port = address.rpartition(":")
    if host not in {"127.0.0.1", "localhost"}:
        raise RegistryError(f"the local registry must listen on loopback, not {address}")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/v2/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@dataclass(frozen=True)
class LocalRegistry:
    """A registry at `address` storing its blobs under `state_dir`."""

    state_dir: Path
    address: str = DEFAULT_REGISTRY_ADDRESS
    executable: Program = "docker-registry"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("registry", self.state_dir)

    def start(self, timeout: float = 15.0) -> str:
        """Start (or reuse) the registry; returns its address."""
        if answers(self.address):
            return self.address
        executable = shutil.which(self.executable)
        if executable is None:
            raise RegistryError(
                f"`{self.executable}` is not installed (Debian: apt-get install docker-registry)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "registry.yml"
        config.write_text(registry_config(self.state_dir / "storage", self.address))
        self.process.start([executable, "serve", str(config)])
        if not wait_until(lambda: answers(self.address), timeout):
            self.process.stop()
            raise RegistryError(
                f"registry did not answer on {self.address} within {timeout:.0f} s:\n"
                + self.process.log_tail()
            )
        return self.address

    def stop(self) -> bool:
        return self.process.stop()
