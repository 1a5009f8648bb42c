"""Session fixtures for the image tests: the engine and registry that `nox -s images` has just
built the release images in (the run's shared engine), a test fixture model, and one pair of
images (API + trainer) built there again with a secret in the build's environment: the layers
the release build made are cached, so only what differs (the model) is built anew."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from imdb_deploy.engine import base_image
from imdb_deploy.images import build, metadata, services
from imdb_deploy.images.platforms import PLATFORMS
from tests.support import fixture_artifact, shared_engine

SECRET_VARIABLE = "MLOPS_RELEASE_TOKEN"


# What these tests push goes under <registry>/tests/images/.
NAMESPACE = "images"
REPOSITORIES = ["mlops-imdb-api", "mlops-imdb-trainer", "mlops-imdb-retention"]


@dataclass(frozen=True)
class ImageEngine:
    """The shared engine, and the registry namespace of these tests."""

    client: docker.DockerClient
    registry: str  # host:port
    namespace: str  # <registry>/tests/images: what builds get as their registry
    cache_dir: Path
    revision: metadata.Revision
    base: str


@dataclass(frozen=True)
class ImageSession:
    """What the session built and where."""

    engine: ImageEngine
    artifact: Path
    api: build.BuiltImage
    trainer: build.BuiltImage
    secret: str
    base: str

    @property
    def client(self) -> docker.DockerClient:
        return self.engine.client


@pytest.fixture(scope="session")
def image_engine(
    tmp_path_factory: pytest.TempPathFactory,
    require_tool: Callable[[str], str],
    repo_root: Path,
) -> Iterator[ImageEngine]:
    for tool in ("podman", "runc", "docker-registry", "apt-get"):
        require_tool(tool)
    if not (base_image.default_cache_dir() / base_image.RootfsRecipe().tarball_name()).exists():
        require_tool("debootstrap")
    with shared_engine() as engine:
        engine.clear(NAMESPACE, REPOSITORIES)  # what earlier runs left
        yield ImageEngine(
            engine.client,
            engine.registry,
            engine.namespace(NAMESPACE),
            engine.cache_dir,
            metadata.git_revision(repo_root),
            engine.base_image,
        )


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    trained = fixture_artifact(tmp_path_factory.mktemp("artifact"))
    print(f"\nfixture artifact trained in {time.monotonic() - started:.1f} s")
    return trained


@pytest.fixture(scope="session")
def image_session(
    image_engine: ImageEngine, fixture_model: Path, repo_root: Path
) -> Iterator[ImageSession]:
    client = image_engine.client
    # A secret in the build environment, as a CI job would have one: it must reach no layer.
    secret = "tok-" + secrets.token_hex(16)
    previous = os.environ.get(SECRET_VARIABLE)
    os.environ[SECRET_VARIABLE] = secret
    try:
        amd64 = PLATFORMS["linux/amd64"]
        base = image_engine.base
        built = {}
        for name in ("api", "trainer"):
            built[name] = build.build_service(
                client, repo_root, services.SERVICES[name], amd64, base_image=base,
                revision=image_engine.revision, cache_dir=image_engine.cache_dir,
                registry=image_engine.namespace, artifact=fixture_model,
            )  # fmt: skip
            print(f"\nbuilt {name} in {built[name].seconds:.1f} s (the release build's cache)")
        yield ImageSession(
            image_engine, fixture_model, built["api"], built["trainer"], secret, base
        )
    finally:
        if previous is None:
            os.environ.pop(SECRET_VARIABLE, None)
        else:
            os.environ[SECRET_VARIABLE] = previous
