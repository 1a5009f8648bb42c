"""The real images in the run's shared engine: healthy, same predictions as the in-process
model, non-root on a read-only root file system, no secret in any layer, pushed, pruned, and a
code change that rebuilds only the project layers.

Run in their own session (`nox -s images`), marked `images`.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker
import pytest
from docker.models.containers import Container

import imdb_model
from imdb_deploy.images import build, metadata, retention, services
from imdb_deploy.images.platforms import PLATFORMS
from tests.images.conftest import ImageSession
from tests.support import free_port

pytestmark = pytest.mark.images
APP_UID = "10001"
MOVIE: dict[str, Any] = {
    "primaryTitle": "The Long Night",
    "originalTitle": "La Longue Nuit",
    "titleType": "movie",
    "isAdult": False,
    "startYear": 1994,
    "runtimeMinutes": 142,
    "genres": ["Crime", "Drama"],
}


def healthcheck(client: docker.DockerClient, image: str) -> list[str]:
    """The image's HEALTHCHECK test: Docker reports it in Config; Podman's compatible inspect
    leaves it out, so its own (libpod) endpoint on the same socket is asked instead."""
    found = (client.images.get(image).attrs.get("Config") or {}).get("Healthcheck")
    if not found:
        image_id = quote(str(client.images.get(image).id), safe="")
        found = client.api.get(f"{client.api.base_url}/v4.0.0/libpod/images/{image_id}/json").json()
        found = found.get("Healthcheck") or found.get("HealthCheck")
    assert found, f"{image} has no HEALTHCHECK"
    test = list(found["Test"])
    assert test[0] == "CMD"
    return test[1:]


def wait_healthy(container: Container, command: list[str], timeout: float = 60.0) -> float:
    """Run the image's health check in the container until it passes (the engine's own health
    status where it runs checks: Podman here has no systemd to schedule them)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        container.reload()
        assert container.status == "running", container.logs().decode()[-2000:]
        status = (container.attrs.get("State", {}).get("Health") or {}).get("Status")
        if status == "healthy":
            return time.monotonic() - started
        if container.exec_run(command).exit_code == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError("never healthy:\n" + container.logs().decode()[-2000:])


def post_json(url: str, body: Any) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a loopback http URL built here)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read())


def test_api_container_is_healthy_and_predicts_like_the_model(image_session: ImageSession) -> None:
    client = image_session.client
    image = image_session.api.reference
    port = free_port()
    container = client.containers.run(
        image,
        detach=True,
        read_only=True,
        network_mode="host",
        environment={"IMDB_API_PORT": str(port), "IMDB_API_HOST": "127.0.0.1"},
    )
    try:
        seconds = wait_healthy(container, healthcheck(client, image))
        print(f"\nAPI container healthy after {seconds:.1f} s")
        uid = container.exec_run(["id", "-u"]).output
        assert isinstance(uid, bytes)
        assert uid.decode().strip() == APP_UID
        verified = imdb_model.verify_artifact(image_session.artifact)
        answer = post_json(f"http://127.0.0.1:{port}/predict", MOVIE)
        assert answer["averageRating"] == verified.predictor().predict_one(MOVIE)
        release = image_session.api.release
        assert release is not None
        assert answer["modelVersion"] == verified.version == release.model.version
        assert image_session.api.version == release.release  # the tag names the release
        # The image says which release it is (commit, tree, model) and serves that model.
        info = get_json(f"http://127.0.0.1:{port}/model/info")
        assert info["release"] == release.identity()
        assert info["release"]["model"]["manifest_sha256"] == verified.manifest["manifest_sha256"]
        # The root file system really is read-only.
        denied = container.exec_run(["python3", "-c", "open('/opt/model/x', 'w')"])
        assert denied.exit_code != 0
        assert isinstance(denied.output, bytes)
        assert b"Read-only file system" in denied.output
    finally:
        container.remove(force=True)


def test_images_carry_labels_user_and_commit_time(image_session: ImageSession) -> None:
    for built in (image_session.api, image_session.trainer):
        attrs = image_session.client.images.get(built.reference).attrs
        labels = attrs["Config"]["Labels"]
        for key, value in built.labels.items():
            assert labels[key] == value
        assert attrs["Config"]["User"] == f"{APP_UID}:{APP_UID}"
        assert labels["org.opencontainers.image.created"] == metadata.iso_time(
            image_session.engine.revision.epoch
        )
        assert set(built.tags) <= set(image_session.client.images.get(built.tags[1]).tags)
    api_labels = image_session.client.images.get(image_session.api.reference).labels
    release = image_session.api.release
    assert release is not None
    assert api_labels["io.mlops-imdb.model.version"] == release.model.version


def test_trainer_container_trains_an_artifact_that_verifies(
    image_session: ImageSession, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)  # the container's user 10001 writes here
    image = image_session.trainer.reference

    def trainer(*args: str) -> str:
        output = image_session.client.containers.run(
            image,
            command=["--quiet", *args],
            remove=True,
            read_only=True,
            network_mode="host",
            tmpfs={"/tmp": "rw,size=256m"},
            volumes={str(work): {"bind": "/work", "mode": "rw"}},
        )
        return bytes(output).decode()

    started = time.monotonic()
    trainer("generate", "--out", "/work/data", "--rows", "2000", "--seed", "3")
    trainer("train", "--data", "/work/data", "--out", "/work/artifact")
    print(f"\ntrainer container: generate + train in {time.monotonic() - started:.1f} s")
    trainer("verify", "/work/artifact")
    verified = imdb_model.verify_artifact(work / "artifact")
    assert verified.version
    assert (work / "artifact" / "manifest.json").stat().st_uid == int(APP_UID)


def layer_files(client: docker.DockerClient, image: str) -> Iterator[tuple[str, bytes]]:
    """Every file of every layer (and the config) of the saved image."""
    data = b"".join(client.images.get(image).save(named=image))
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            content = outer.extractfile(member)
            assert content is not None
            blob = content.read()
            yield member.name, blob
            if not tarfile.is_tarfile(io.BytesIO(blob)):
                continue
            with tarfile.open(fileobj=io.BytesIO(blob)) as inner:
                for entry in inner.getmembers():
                    if entry.isfile():
                        file = inner.extractfile(entry)
                        assert file is not None
                        yield f"{member.name}:{entry.name}", file.read()


def test_no_secret_in_layers_or_history(image_session: ImageSession) -> None:
    secret = image_session.secret.encode()
    for built in (image_session.api, image_session.trainer):
        client = image_session.client
        image = client.images.get(built.reference)
        history = json.dumps(image.history())
        assert image_session.secret not in history
        assert image_session.secret not in json.dumps(image.attrs)
        assert "TOKEN" not in history
        scanned = 0
        for name, blob in layer_files(client, built.reference):
            scanned += 1
            assert secret not in blob, f"the build secret leaked into {name}"
        assert scanned > 1000  # the layers were really opened


def test_code_change_rebuilds_only_the_project_layers(
    image_session: ImageSession, repo_root: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        if (repo_root / name).exists():
            shutil.copy2(repo_root / name, copy / name)
    for top in ("services", "deploy"):
        shutil.copytree(repo_root / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "services" / "api" / "src" / "imdb_api" / "__init__.py"
    init.write_text(init.read_text() + "\nCHANGED_FOR_THE_REBUILD_TEST = True\n")
    rebuilt = build.build_service(
        image_session.client, copy, services.SERVICES["api"], PLATFORMS["linux/amd64"],
        base_image=image_session.base, revision=image_session.engine.revision,
        cache_dir=image_session.engine.cache_dir, registry=image_session.engine.namespace,
        artifact=image_session.artifact,
    )  # fmt: skip
    print(f"\nrebuild after a one-line change: {rebuilt.seconds:.1f} s")
    before = image_session.client.images.get(image_session.api.image_id).attrs["RootFS"]["Layers"]
    after = image_session.client.images.get(rebuilt.image_id).attrs["RootFS"]["Layers"]
    assert rebuilt.image_id != image_session.api.image_id
    # Base, user, dependencies and model layers are reused; the project layer differs, and the
    # release record on top of it (one small file) is laid anew.
    assert after[:-2] == before[:-2]
    assert after[-2] != before[-2]
    assert rebuilt.seconds <= 30  # target 15 s; generous here for slow CI machines
    # Put the session's tags back on the session's image.
    for tag in image_session.api.tags:
        repo, _, name = tag.rpartition(":")
        image_session.client.images.get(image_session.api.image_id).tag(repo, name)


def test_push_and_retention_in_engine_and_registry(
    image_session: ImageSession, tmp_path: Path
) -> None:
    client = image_session.client
    digests = build.push(client, image_session.api.tags)
    assert set(digests) == set(image_session.api.tags)
    remote = retention.RegistryClient(image_session.engine.registry)
    prefix = image_session.engine.namespace.partition("/")[2]  # tests/images
    api, throwaway = f"{prefix}/mlops-imdb-api", f"{prefix}/mlops-imdb-retention"
    assert set(remote.tags(api)) >= {t.rpartition(":")[2] for t in digests}

    # Four tiny releases of a throw-away repository, one a day.
    repo = f"{image_session.engine.namespace}/mlops-imdb-retention"
    for day in range(1, 5):
        (tmp_path / "Dockerfile").write_text(
            f"FROM {image_session.base}\n"
            f'LABEL {retention.VERSION_LABEL}="v{day}" '
            f'{retention.CREATED_LABEL}="2026-01-0{day}T00:00:00Z"\n'
        )
        image, _ = client.images.build(path=str(tmp_path), tag=f"{repo}:v{day}", pull=False)
        image.tag(repo, f"sha{day}")
        build.push(client, [f"{repo}:v{day}", f"{repo}:sha{day}"])

    gone = retention.prune_local(client, repo, keep=2, protected={"sha1"})
    assert [r.version for r in gone] == ["v2"]
    left = {t.rpartition(":")[2] for i in client.images.list(name=repo) for t in i.tags}
    assert left == {"v1", "sha1", "v3", "sha3", "v4", "sha4"}

    gone = retention.prune_registry(remote, throwaway, keep=2, protected={"v1"})
    assert [r.version for r in gone] == ["v2"]
    assert set(remote.tags(throwaway)) == {"v1", "sha1", "v3", "sha3", "v4", "sha4"}
    # The API release is untouched by pruning another repository.
    assert remote.tags(api)
