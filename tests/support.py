"""Helpers shared by test modules in several folders (fixtures belong in a conftest.py instead).

Imported as `tests.support`, like `tests.images.fakes` or `tests.notify.receivers`: with
`--import-mode=importlib` pytest imports `tests` itself (a namespace package, no __init__.py)
before the first conftest.py or test module below it, so no sys.path change is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import psutil
import pytest
import yaml

from imdb_deploy.engine import base_image, local, podman, registry
from imdb_deploy.images import artifact, retention

# Images the tests build and push live under this namespace of the shared registry, apart from
# the releases of `make pipeline` (`<registry>/mlops-imdb-api`).
TEST_NAMESPACE = "tests"


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


@dataclass(frozen=True)
class SharedEngine:
    """The checkout's local engine and registry (`nox -s engine -- up`), which the integration
    and images sessions of a run share: one layer cache, one registry, one base image. What the
    tests push goes under `<registry>/tests/<namespace>/`, apart from the pipeline's releases."""

    client: docker.DockerClient
    registry: str  # host:port
    registry_storage: Path  # the registry's blobs, for tests that tamper with them
    base_image: str
    cache_dir: Path  # wheels and root file systems the builds keep

    def namespace(self, name: str) -> str:
        """`<registry>/tests/<name>`: what to give builds as their registry."""
        return f"{self.registry}/{TEST_NAMESPACE}/{name}"

    def clear(self, name: str, repositories: list[str]) -> None:
        """Remove what earlier runs left in a namespace: the repositories' tags in the registry
        (their blobs wait for its garbage collection) and their images in the engine (layers
        that other images use stay). At the start of a run, never at its end: another test
        worker may still deploy from them."""
        remote = retention.RegistryClient(self.registry)
        for repository in repositories:
            name_in_registry = f"{TEST_NAMESPACE}/{name}/{repository}"
            for tag in remote.tags(name_in_registry):
                with contextlib.suppress(retention.RetentionError):
                    remote.delete(name_in_registry, remote.manifest(name_in_registry, tag)[0])
            local = f"{self.namespace(name)}/{repository}"
            for image in self.client.images.list(name=local):
                for tag in image.tags:
                    if tag.startswith(local + ":"):
                        with contextlib.suppress(docker.errors.DockerException):
                            self.client.images.remove(tag)


@contextlib.contextmanager
def shared_engine() -> Iterator[SharedEngine]:
    """Start or reuse the checkout's engine (the integration and images sessions start it
    first; a plain pytest run starts it here), with the settings `engine up` reads."""
    state = local.state_dir()
    info = local.up(
        state,
        os.environ.get(local.REGISTRY_VAR, registry.DEFAULT_REGISTRY_ADDRESS),
        os.environ.get(local.BASE_SOURCE_VAR),
        storage_dir=(
            Path(os.environ[local.STORAGE_DIR_VAR])
            if os.environ.get(local.STORAGE_DIR_VAR)
            else None
        ),
    )
    client = docker.DockerClient(base_url=info.docker_host, timeout=900)
    try:
        yield SharedEngine(
            client,
            info.registry,
            registry_storage(info.registry),
            info.base_image,
            base_image.default_cache_dir(),
        )
    finally:
        client.close()


def registry_storage(address: str) -> Path:
    """Where the registry listening on `address` keeps its blobs, read from the configuration
    its process serves (`docker-registry serve CONFIG`): another checkout's `engine up` may have
    started the one that answers."""
    host, _, port = address.rpartition(":")
    for connection in psutil.net_connections(kind="tcp"):
        local_address = connection.laddr
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.pid is not None
            and local_address
            and (local_address.ip, local_address.port) == (host, int(port))
        ):
            config = Path(psutil.Process(connection.pid).cmdline()[-1])
            settings = yaml.safe_load(config.read_text())
            return Path(settings["storage"]["filesystem"]["rootdirectory"])
    raise AssertionError(f"no registry process listens on {address}")


# The test fixture model: small generated data, fixed seed, trained with the imdb-trainer CLI.
FIXTURE_ROWS = 3000
FIXTURE_SEED = 7


def fixture_artifact(state: Path, rows: int = FIXTURE_ROWS, seed: int = FIXTURE_SEED) -> Path:
    """A test fixture model: trained (once per `state` directory) on generated data and
    verified; releases of the pipeline itself serve the model `nox -s train` published."""
    target = state / f"fixture-artifact-{rows}-{seed}"
    if (target / "manifest.json").is_file():
        artifact.run_trainer("verify", str(target))
        return target
    data = state / f"fixture-data-{rows}-{seed}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    artifact.run_trainer("generate", "--out", str(data), "--rows", str(rows), "--seed", str(seed))
    artifact.run_trainer("train", "--data", str(data), "--out", str(target))
    artifact.run_trainer("verify", str(target))
    return target
