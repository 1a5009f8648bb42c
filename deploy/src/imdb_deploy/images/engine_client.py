"""The Docker Engine API client for builds: the engine `imdb_deploy.engine up` recorded, else
DOCKER_HOST, and the base image each platform builds from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from imdb_deploy.engine import base_image, local, podman
from imdb_deploy.images.platforms import Platform

# The locally made arm64 stand-in gets its own name: one tag cannot hold two architectures in
# a single-platform image store, and the amd64 one keeps the usual name.
FOREIGN_BASE = "localhost/python:3.11-slim-{arch}"


class EngineNotFoundError(RuntimeError):
    """No engine is recorded or reachable."""


def engine_info(state: Path | None = None) -> dict[str, object]:
    """`engine.json` written by `python -m imdb_deploy.engine up` (empty when absent)."""
    path = (state or local.state_dir()) / "engine.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def connect(docker_host: str | None = None, timeout: int = 900) -> docker.DockerClient:
    """A client for `docker_host`, else the recorded engine, else DOCKER_HOST / the default."""
    host = (
        docker_host or str(engine_info().get("docker_host") or "") or os.environ.get("DOCKER_HOST")
    )
    if not host:
        raise EngineNotFoundError(
            "no container engine: run `python -m imdb_deploy.engine up` (or set DOCKER_HOST)"
        )
    # Probe first: the SDK leaks its socket when a unix connect fails.
    if not podman.answers(host):
        raise EngineNotFoundError(f"no container engine answers at {host}")
    try:
        return docker.DockerClient(base_url=host, timeout=timeout)
    except DockerException as error:
        raise EngineNotFoundError(f"no container engine answers at {host}: {error}") from error


def import_for_platform(
    client: docker.DockerClient, tarball: Path, reference: str, platform: Platform
) -> str:
    """Import a root file system tarball as an image of `platform`'s architecture.

    The SDK's import has no platform argument; the API's `platform` query parameter (Docker
    1.32+, Podman's compatible API) sets the image's architecture.
    """
    repository, _, tag = reference.rpartition(":")
    api = client.api
    url = f"{api.base_url}/v{api.api_version}/images/create"
    params = {"fromSrc": "-", "repo": repository, "tag": tag, "platform": platform.docker}
    with tarball.open("rb") as data:
        response = api.post(
            url, params=params, data=data, headers={"Content-Type": "application/tar"}, timeout=None
        )
    response.raise_for_status()
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    image_id = next(
        (str(line.get("id") or line.get("status")) for line in reversed(lines) if line), ""
    )
    if not image_id.startswith("sha256:"):
        raise base_image.BaseImageError(f"import of {tarball.name} gave no image id: {lines}")
    image = client.images.get(image_id)
    # Docker honours the tag given; Podman's compatible API tags `latest` instead.
    image.tag(repository, tag)
    for stray in image.tags:
        if stray != reference and stray.endswith(":latest"):
            client.images.remove(stray)
    return image_id


def ensure_platform_base(
    client: docker.DockerClient,
    platform: Platform,
    source: str,
    cache_dir: Path | None = None,
) -> str:
    """The base image reference to build `platform` from, pulled or made when missing."""
    if platform.is_native():
        base_image.ensure_base_image(client, source=source, cache_dir=cache_dir)
        return base_image.DEFAULT_BASE_IMAGE
    reference = FOREIGN_BASE.format(arch=platform.debian_arch)
    try:
        client.images.get(reference)
        return reference
    except ImageNotFound:
        pass
    if source == "pull":
        pulled = client.images.pull(
            base_image.DEFAULT_BASE_IMAGE.rpartition(":")[0], tag="3.11-slim",
            platform=platform.docker,
        )  # fmt: skip
        pulled.tag(*reference.rpartition(":")[::2])
        return reference
    recipe = base_image.RootfsRecipe(arch=platform.debian_arch)
    tarball = base_image.rootfs_tarball(recipe, cache_dir or base_image.default_cache_dir())
    import_for_platform(client, tarball, reference, platform)
    return reference


def base_source(client: docker.DockerClient) -> str:
    """How to get a missing base image: debootstrap on Podman (no registry reachable), else pull."""
    recorded = engine_info()
    if "managed" in recorded:
        return "debootstrap" if recorded["managed"] else "pull"
    components = client.version().get("Components") or [{}]
    return "debootstrap" if "Podman" in str(components[0].get("Name", "")) else "pull"
