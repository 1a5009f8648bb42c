"""Fixtures for the deploy integration tests: an isolated registry and build engine, the release
images (two good versions and the broken ones of the fault matrix), and a sandbox fleet of two
hosts (sshd, Podman storage and nginx each) with an environment file pointing at it."""

from __future__ import annotations

import io
import json
import os
import secrets
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from imdb_deploy.bluegreen.config import Environment, load_environment
from imdb_deploy.bluegreen.orchestrator import Orchestrator
from imdb_deploy.engine import base_image
from imdb_deploy.images import artifact, build, engine_client, metadata, services
from imdb_deploy.images.platforms import PLATFORMS
from imdb_deploy.sandbox.fleet import Fleet
from imdb_deploy.sandbox.inventory import fleet_of
from tests.support import isolated_engine, loopback

# Addresses of the test fleet: apart from the sandbox environments' (127.0.0.1x, 127.0.0.2x).
TEST_HOSTS = (("e2e-1", loopback(161)), ("e2e-2", loopback(162)))
SSH_PORT = 2261
HTTP_PORT = 8261
APP_PORTS = {"blue": 8271, "green": 8272}
# The environment passes this deployer variable to its containers as a secret.
SECRET_VARIABLE = "MLOPS_E2E_TOKEN"


@dataclass(frozen=True)
class Releases:
    """Versions pushed to the test registry, by role."""

    registry: str
    image: str
    v1: str
    v2: str
    never_ready: str  # its process hangs: /ready never answers
    tampered: str  # a model file changed after the build: verification fails, never ready
    mislabelled: str  # ready, but serves another version than its tag: the smoke test fails
    corrupt: str  # a layer's bytes changed in the registry after the push: the pull refuses it
    slow: str  # a good release whose every prediction takes 150 ms: the benchmark gate fails


def _derived_image(client: docker.DockerClient, base: str, tag: str, dockerfile: str) -> None:
    """Build a one-layer image FROM `base` (the fault matrix's broken releases)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        data = f"FROM {base}\n{dockerfile}".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True)


MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


def corrupt_top_layer(address: str, storage: Path, tag: str) -> None:
    """Flip bytes of the tag's newest layer in the registry's own files, as an attacker with
    access to its storage would: the registry still serves it, the digest no longer matches."""
    url = f"http://{address}/v2/{services.SERVICES['api'].repository}/manifests/{tag}"
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
        digest = json.loads(reply.read())["layers"][-1]["digest"].removeprefix("sha256:")
    blob = storage / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def releases(
    tmp_path_factory: pytest.TempPathFactory,
    require_tool: Callable[[str], str],
    repo_root: Path,
) -> Iterator[Releases]:
    for tool in ("podman", "runc", "docker-registry", "sshd", "nginx", "curl", "flock"):
        require_tool(tool)
    with isolated_engine(tmp_path_factory) as engine:
        client, address = engine.client, engine.registry
        cache = base_image.default_cache_dir()
        amd64 = PLATFORMS["linux/amd64"]
        base = engine_client.ensure_platform_base(client, amd64, "debootstrap", cache)
        revision = metadata.git_revision(repo_root)
        versions = []
        for seed in (7, 8, 10):  # seed 9 trains a model its own gate rejects
            trained = artifact.demo_artifact(tmp_path_factory.mktemp(f"artifact{seed}"), seed=seed)
            built = build.build_service(
                client, repo_root, services.SERVICES["api"], amd64, base_image=base,
                revision=revision, cache_dir=cache, registry=address, artifact=trained,
            )  # fmt: skip
            build.push(client, built.tags[:1])
            versions.append(built.version)
        image = metadata.repository(address, services.SERVICES["api"].repository)
        v1, v2, slow = versions
        # The third model, slowed down, under its own version tag (it passes the smoke test).
        _derived_image(client, f"{image}:{slow}", f"{image}:{slow}",
                       "ENV IMDB_API_DEBUG_DELAY_S=0.15")  # fmt: skip
        build.push(client, [f"{image}:{slow}"])
        broken = {
            "never-ready": 'ENTRYPOINT ["sleep", "infinity"]',
            "tampered": "USER 0\nRUN echo tampered >> /opt/model/model.onnx\nUSER 10001",
            "mislabelled": "LABEL io.mlops-imdb.note=mislabelled",
        }
        for name, dockerfile in broken.items():
            tag = f"{image}:{v1}-{name}"
            _derived_image(client, f"{image}:{v1}", tag, dockerfile)
            build.push(client, [tag])
        corrupt = f"{v1}-corrupt"
        own_layer = "USER 0\nRUN echo a layer of its own > /opt/.corrupt-me\nUSER 10001"
        _derived_image(client, f"{image}:{v1}", f"{image}:{corrupt}", own_layer)
        build.push(client, [f"{image}:{corrupt}"])
        corrupt_top_layer(engine.registry, engine.registry_storage, corrupt)
        yield Releases(
            address, image, v1, v2,
            f"{v1}-never-ready", f"{v1}-tampered", f"{v1}-mislabelled", corrupt, slow,
        )  # fmt: skip


def environment_toml(state: Path, image: str, root: Path, **overrides: str) -> str:
    """A sandbox environment on the test fleet; `overrides` replace whole sections."""
    hosts = "".join(
        f'\n[[hosts]]\nname = "{name}"\naddress = "{address}"\napp_bind = "{address}"\n'
        for name, address in TEST_HOSTS
    )
    settings = {
        "lock": "ttl_s = 8\nheartbeat_s = 2",
        "readiness": "passes = 3\ninterval_s = 0.2\ntimeout_s = 15",
        "drain": "seconds = 1",
        # Loose p95 tolerance: the tests share two cores with everything else; the slow release
        # is 150 ms per prediction, far beyond it.
        "benchmark": "seconds = 2\nconnections = 2\np95_tolerance = 1.0\np95_slack_ms = 25\n"
        "min_requests = 10",
    }
    settings.update(overrides)
    sections = "".join(f"\n[{name}]\n{body}\n" for name, body in settings.items())
    return f"""\
sandbox = true
image = "{image}"
deploy_root = "{root}"

[ssh]
port = {SSH_PORT}
known_hosts = "{state / 'known_hosts'}"
identity_file = "{state / 'id_ed25519'}"
connect_timeout_s = 3
command_timeout_s = 60

[nginx]
mode = "own"
port = {HTTP_PORT}
user = "www-data"

[app]
ports = {{ blue = {APP_PORTS['blue']}, green = {APP_PORTS['green']} }}
settings = {{ IMDB_API_WORKERS = "1", IMDB_API_GRACEFUL_SHUTDOWN_S = "5" }}
secrets = {{ IMDB_API_E2E_TOKEN = "{SECRET_VARIABLE}" }}
stop_timeout_s = 8
{sections}{hosts}"""


@dataclass
class Sandbox:
    """The test fleet with its environment; `orchestrator()` makes a fresh deployer."""

    fleet: Fleet
    environment: Environment
    toml: Path
    releases: Releases
    lines: list[str]

    def orchestrator(
        self, environment: Environment | None = None, **kwargs: object
    ) -> Orchestrator:
        """A deployer for the test environment (or a variant of it) that logs into `lines`."""
        return Orchestrator(
            environment or self.environment, echo=self.lines.append, **kwargs  # type: ignore[arg-type]
        )

    def served_versions(self) -> list[str | None]:
        """The model version each host's nginx serves now (None: nothing is served yet)."""
        versions: list[str | None] = []
        for host in self.environment.hosts:
            url = f"http://{self.environment.http_address(host)}/model/info"
            try:
                reply = urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code != 502:  # 502: nginx is up, with no release behind it yet
                    raise
                versions.append(None)
                continue
            with reply:
                versions.append(json.loads(reply.read())["version"])
        return versions


@pytest.fixture(scope="session")
def sandbox(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Two hosts, set up over SSH by the deploy's own `setup`; torn down at the end."""
    state = tmp_path_factory.mktemp("fleet")
    roots = tmp_path_factory.mktemp("roots")
    toml = state / "e2e.toml"
    toml.write_text(environment_toml(state, releases.image, roots))
    environment = load_environment(str(toml))
    fleet = fleet_of([environment], state, registry=releases.registry)
    os.environ[SECRET_VARIABLE] = "e2e-" + secrets.token_hex(12)
    try:
        fleet.up()
        box = Sandbox(fleet, environment, toml, releases, [])
        deployer = box.orchestrator()
        try:
            deployer.setup()
        finally:
            deployer.close()
        yield box
    finally:
        fleet.down()
        os.environ.pop(SECRET_VARIABLE, None)
