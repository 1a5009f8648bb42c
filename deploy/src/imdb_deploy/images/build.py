"""Build, tag, push and export service images through the Docker Engine API."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from imdb_deploy.images import context as build_context
from imdb_deploy.images import metadata, retention
from imdb_deploy.images import release as releases
from imdb_deploy.images.artifact import verify_artifact
from imdb_deploy.images.platforms import Platform
from imdb_deploy.images.services import ServiceImage

_BUILT = re.compile(r"Successfully built ([0-9a-f]{12,64})")


class BuildError(RuntimeError):
    """The engine refused or failed a build, push or export."""


@dataclass(frozen=True)
class BuiltImage:
    """One built image, what it is called and what it took."""

    service: str
    platform: str
    image_id: str
    tags: list[str]
    version: str
    labels: dict[str, str]
    seconds: float
    log: list[str] = field(default_factory=list, repr=False)
    release: releases.Release | None = None  # the API image's: its code tree and model

    @property
    def reference(self) -> str:
        """The version tag (the first one)."""
        return self.tags[0]


def platform_suffix(platform: Platform) -> str:
    """Tag suffix: none for linux/amd64 (the platform we deploy), `-arm64` for arm64."""
    return "" if platform.docker == "linux/amd64" else f"-{platform.suffix}"


def image_id_from(lines: Iterable[Mapping[str, Any]], log: list[str]) -> str:
    """Read a build's JSON stream: collect the log, raise on error, return the image id."""
    image_id = ""
    for line in lines:
        if "error" in line or "errorDetail" in line:
            detail = line.get("error") or line.get("errorDetail")
            raise BuildError(f"build failed: {detail}\n" + "".join(log[-40:]))
        text = line.get("stream")
        if isinstance(text, str):
            log.append(text)
            match = _BUILT.search(text)
            if match:
                image_id = match.group(1)
        aux = line.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
    if not image_id:
        raise BuildError("build finished without an image id:\n" + "".join(log[-40:]))
    return image_id


def run_build(
    client: docker.DockerClient,
    path: Path,
    tag: str,
    buildargs: Mapping[str, str],
    *,
    platform: Platform,
    nocache: bool = False,
) -> tuple[str, list[str]]:
    """One build of the context at `path`; returns (image id, log)."""
    log: list[str] = []
    stream: Iterator[Mapping[str, Any]] = client.api.build(
        path=str(path),
        tag=tag,
        buildargs=dict(metadata.check_build_args(buildargs)),
        platform=platform.docker,
        pull=False,
        rm=True,
        forcerm=True,
        nocache=nocache,
        decode=True,
        # Never inject the user's proxy settings (which may hold credentials) as build args.
        use_config_proxy=False,
    )
    return image_id_from(stream, log), log


def build_service(
    client: docker.DockerClient,
    root: Path,
    service: ServiceImage,
    platform: Platform,
    *,
    base_image: str,
    revision: metadata.Revision,
    cache_dir: Path,
    registry: str | None = None,
    artifact: Path | None = None,
    source: str = metadata.DEFAULT_SOURCE,
    nocache: bool = False,
) -> BuiltImage:
    """Assemble the context in a temporary directory, build, and tag the image."""
    started = time.monotonic()
    cache_dir.mkdir(parents=True, exist_ok=True)  # a new machine's (or user's) first build
    with tempfile.TemporaryDirectory(prefix=f"mlops-image-{service.name}-", dir=cache_dir) as tmp:
        ctx = build_context.assemble(
            root, service, platform, Path(tmp) / "context", cache_dir=cache_dir, artifact=artifact
        )
        release = None
        if ctx.model_version is not None:
            manifest = json.loads((ctx.path / "model" / "manifest.json").read_text())
            release = releases.new_release(manifest, revision, source)
            releases.write(release, ctx.path / releases.RELEASE_FILE, identity_only=True)
            version = release.release
            if not platform.is_native() and artifact is not None:
                # Under qemu onnxruntime cannot load the model: verify it natively instead.
                verify_artifact(artifact)
        else:
            version = metadata.trainer_version(ctx.project_versions[service.distribution], revision)
        args = metadata.build_args(
            version=version,
            revision=revision,
            base_image=base_image,
            source=source,
            model_version=ctx.model_version,
            verify_model=platform.is_native(),
        )
        repo = metadata.repository(registry, service.repository)
        tags = metadata.image_tags(repo, version, revision, platform_suffix(platform))
        image_id, log = run_build(
            client, ctx.path, tags[0], args, platform=platform, nocache=nocache
        )
    image = client.images.get(image_id)
    for tag in tags:
        repository, _, name = tag.rpartition(":")
        image.tag(repository, name)
    return BuiltImage(
        service=service.name,
        platform=platform.docker,
        image_id=str(image.id),
        tags=tags,
        version=version,
        labels=metadata.expected_labels(args),
        seconds=time.monotonic() - started,
        log=log,
        release=release,
    )


REGISTRY_USER_VAR = "MLOPS_REGISTRY_USER"
REGISTRY_PASSWORD_VAR = "MLOPS_REGISTRY_PASSWORD"  # noqa: S105 - the variable's name, not a value


def registry_auth(environ: Mapping[str, str]) -> dict[str, str] | None:
    """Credentials for a registry that needs them (GHCR in CD: the job's GITHUB_TOKEN)."""
    user, password = environ.get(REGISTRY_USER_VAR), environ.get(REGISTRY_PASSWORD_VAR)
    return {"username": user, "password": password} if user and password else None


def push(
    client: docker.DockerClient, tags: Iterable[str], auth: dict[str, str] | None = None
) -> dict[str, str]:
    """Push each tag (with `auth` when given); returns tag -> pushed digest (when reported)."""
    digests = {}
    for tag in tags:
        repository, _, name = tag.rpartition(":")
        digest = ""
        lines = client.images.push(repository, tag=name, stream=True, decode=True, auth_config=auth)
        for line in lines:
            if "error" in line or "errorDetail" in line:
                raise BuildError(f"push of {tag} failed: {line.get('error') or line}")
            aux = line.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                digest = aux["Digest"]
        digests[tag] = digest
    return digests


def pushed_digest(tag: str, reported: str) -> str:
    """The digest a push reported (Docker does), else what a loopback registry now serves
    for the tag (Podman's Docker API reports none)."""
    if reported:
        return reported
    location, _, name = tag.rpartition(":")
    address, _, repository = location.partition("/")
    try:
        digest, _ = retention.RegistryClient(address).manifest(repository, name)
    except retention.RetentionError as error:
        raise BuildError(f"no digest for {tag}: the push reported none and {error}") from None
    if not digest:
        raise BuildError(f"no digest for {tag}: neither the push nor the registry named one")
    return digest


def export(client: docker.DockerClient, tag: str, directory: Path) -> Path:
    """`docker save` of one tag into `directory/<name>_<tag>.tar`, for hosts without a registry."""
    directory.mkdir(parents=True, exist_ok=True)
    name = tag.rpartition("/")[2].replace(":", "_")
    target = directory / f"{name}.tar"
    partial = target.with_suffix(".tar.partial")
    with partial.open("wb") as out:
        for chunk in client.images.get(tag).save(named=tag):
            out.write(chunk)
    partial.replace(target)
    return target
