"""Helpers shared by test modules in several folders (fixtures belong in a conftest.py instead).

Imported as `tests.support`, like `tests.images.fakes` or `tests.notify.receivers`: with
`--import-mode=importlib` pytest imports `tests` itself (a namespace package, no __init__.py)
before the first conftest.py or test module below it, so no sys.path change is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from imdb_deploy.engine import podman, registry


def loopback(host: int) -> str:
    """A loopback address of this checkout's own /24 (127.0.N.host, N from the checkout's path):
    two checkouts on one machine run their fleets' fixed ports side by side, and neither meets
    the sandbox environments on 127.0.0.x."""
    checkout = Path(__file__).resolve().parents[1]
    network = 1 + int(hashlib.sha256(str(checkout).encode()).hexdigest()[:6], 16) % 250
    return f"127.0.{network}.{host}"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port on `address` that was free a moment ago (the kernel's pick, closed again).

    Nothing listens on it until someone binds it, so it also serves as a port that refuses.
    """
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port for the block; yields `127.0.0.1:PORT`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class IsolatedEngine:
    """An engine and a registry of a test session's own."""

    client: docker.DockerClient
    registry: str  # host:port
    registry_storage: Path  # the registry's blobs, for tests that tamper with them


@contextlib.contextmanager
def isolated_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedEngine]:
    """A Podman engine with its own storage and a registry on a free loopback port, for the
    block; both are stopped after."""
    local = registry.LocalRegistry(tmp_path_factory.mktemp("registry"), f"127.0.0.1:{free_port()}")
    address = local.start()
    state = tmp_path_factory.mktemp("engine")
    service = podman.PodmanService(state, storage_dir=state / "storage")
    try:
        service.start(insecure_registries=[address])
        client = docker.DockerClient(base_url=service.docker_host, timeout=900)
        try:
            yield IsolatedEngine(client, address, local.state_dir / "storage")
        finally:
            client.close()
    finally:
        service.stop()
        local.stop()
