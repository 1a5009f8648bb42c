"""The real thing: a Podman service with its own storage, a local registry, the made base image.

A Dockerfile `FROM python:3.11-slim` builds with pull disabled, runs as non-root on a read-only
root file system, and its image is pushed to the registry and pulled back into a second engine.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from imdb_deploy.engine import base_image, podman, registry

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --no-create-home app
USER 10001
CMD ["python3", "-c", "import os, platform; print(os.getuid(), platform.python_version())"]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def registry_address(
    tmp_path_factory: pytest.TempPathFactory, require_tool: Callable[[str], str]
) -> Iterator[str]:
    require_tool("docker-registry")
    local = registry.LocalRegistry(tmp_path_factory.mktemp("registry"), f"127.0.0.1:{free_port()}")
    yield local.start()
    assert local.stop()


def start_engine(state: Path, registry_address: str) -> podman.PodmanService:
    service = podman.PodmanService(state, storage_dir=state / "storage")
    service.start(insecure_registries=[registry_address])
    return service


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory,
    require_tool: Callable[[str], str],
    registry_address: str,
) -> Iterator[podman.PodmanService]:
    require_tool("podman")
    require_tool("runc")
    service = start_engine(tmp_path_factory.mktemp("engine"), registry_address)
    yield service
    assert service.stop()
    assert service.storage_dir is not None
    assert podman.mount_points_below(service.storage_dir) == []
    # The copies Podman keeps of loaded images go with the service.
    assert not service.tmp_dir.exists()


@pytest.fixture(scope="module")
def engine(service: podman.PodmanService) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=service.docker_host, timeout=300)
    yield client
    client.close()


@pytest.fixture(scope="module")
def base(engine: docker.DockerClient, require_tool: Callable[[str], str]) -> str:
    if not (base_image.default_cache_dir() / base_image.RootfsRecipe().tarball_name()).exists():
        require_tool("debootstrap")
    return base_image.ensure_base_image(engine)


def test_engine_answers_and_reuses_a_running_service(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    assert engine.ping()
    assert engine.version()["Components"][0]["Name"] == "Podman Engine"


def test_base_image_is_there_under_its_usual_name(
    engine: docker.DockerClient, base: str, service: podman.PodmanService
) -> None:
    # Podman keeps a copy of each image loaded through its Docker API in its TMPDIR: the
    # service's own directory, removed when it stops, not the machine's /var/tmp.
    assert list(service.tmp_dir.glob("api_load.tar*"))
    image = engine.images.get(base_image.DEFAULT_BASE_IMAGE)
    assert image.id == base
    assert image.tags == [base_image.DEFAULT_BASE_IMAGE]
    # A second call finds it instead of importing again.
    assert base_image.ensure_base_image(engine) == base


def test_build_run_push_and_pull(
    engine: docker.DockerClient,
    base: str,
    registry_address: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    image, _ = engine.images.build(path=str(tmp_path), tag="localhost/probe:1", pull=False)
    output = engine.containers.run(
        "localhost/probe:1", remove=True, read_only=True, network_mode="host"
    )
    uid, version = output.decode().split()
    assert uid == "10001"
    assert version.startswith("3.11")

    reference = f"{registry_address}/probe"
    assert image.tag(reference, "1")
    pushed = list(engine.images.push(reference, tag="1", stream=True, decode=True))
    assert not [line for line in pushed if "error" in line], pushed
    with urllib.request.urlopen(f"http://{registry_address}/v2/_catalog", timeout=5) as answer:
        assert "probe" in json.loads(answer.read())["repositories"]

    other = start_engine(tmp_path_factory.mktemp("other-engine"), registry_address)
    try:
        client = docker.DockerClient(base_url=other.docker_host, timeout=300)
        pulled = client.images.pull(reference, tag="1")
        assert pulled.id == image.id
        client.close()
    finally:
        other.stop()
