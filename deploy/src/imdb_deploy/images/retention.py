"""Image retention: keep the newest N versions of each image, never one that is in use.

A *version* is what the `org.opencontainers.image.version` label says (the API's model version,
the trainer's `<project>-g<sha>`); all images and tags of one version (the commit tag, the
per-platform `-arm64` variants) go or stay together. Versions are ordered by their `created`
label (the commit time), then by version string. `protected` names versions or tags that an
environment runs or would roll back to: they are kept whatever their age, on top of the N.
Images without our version label are never touched.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError

from imdb_deploy.images.platforms import PLATFORMS

VERSION_LABEL = "org.opencontainers.image.version"
CREATED_LABEL = "org.opencontainers.image.created"
DEFAULT_KEEP = 5
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
PLATFORM_SUFFIXES = tuple(f"-{p.debian_arch}" for p in PLATFORMS.values())


class RetentionError(RuntimeError):
    """The registry could not be listed or a deletion failed."""


@dataclass
class Release:
    """One version: the images (ids or digests) and the tags that carry it."""

    version: str
    created: str
    images: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)


def normalise(name: str) -> str:
    """A protected name as a bare version or tag: `repo:tag` -> `tag`, `-arm64` dropped."""
    tag = name.rpartition(":")[2] if "/" in name or name.count(":") == 1 else name
    for suffix in PLATFORM_SUFFIXES:
        if tag.endswith(suffix):
            return tag.removesuffix(suffix)
    return tag


def is_protected(release: Release, protected: Collection[str]) -> bool:
    names = {normalise(name) for name in protected}
    return release.version in names or any(normalise(tag) in names for tag in release.tags)


def select_prunable(
    releases: Iterable[Release], keep: int = DEFAULT_KEEP, protected: Collection[str] = ()
) -> list[Release]:
    """The releases to remove: all but the newest `keep`, minus the protected ones."""
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    ordered = sorted(releases, key=lambda r: (r.created, r.version), reverse=True)
    return [release for release in ordered[keep:] if not is_protected(release, protected)]


def group(entries: Iterable[tuple[str, Iterable[str], Mapping[str, str]]]) -> list[Release]:
    """Releases from (image id or digest, tags, labels) entries; unlabelled images are skipped."""
    releases: dict[str, Release] = {}
    for image, tags, labels in entries:
        version = labels.get(VERSION_LABEL)
        if not version:
            continue
        release = releases.setdefault(version, Release(version, labels.get(CREATED_LABEL, "")))
        release.created = max(release.created, labels.get(CREATED_LABEL, ""))
        release.images.add(image)
        release.tags.update(tags)
    return list(releases.values())


# ------------------------------------------------------------------ local engine


def local_releases(client: docker.DockerClient, repository: str) -> list[Release]:
    """The releases of `repository` (`<registry>/<name>`) in the engine's image store."""
    entries = []
    for image in client.images.list(name=repository):
        tags = [t.rpartition(":")[2] for t in image.tags if t.rpartition(":")[0] == repository]
        labels = image.labels or {}
        entries.append((str(image.id), tags, labels))
    return group(entries)


def prune_local(
    client: docker.DockerClient,
    repository: str,
    keep: int = DEFAULT_KEEP,
    protected: Collection[str] = (),
    dry_run: bool = False,
) -> list[Release]:
    """Untag (and so delete) the pruned releases; an image a container uses stays (reported)."""
    pruned = select_prunable(local_releases(client, repository), keep, protected)
    if dry_run:
        return pruned
    for release in pruned:
        for tag in sorted(release.tags):
            try:
                client.images.remove(f"{repository}:{tag}", noprune=False)
            except APIError as error:
                raise RetentionError(f"cannot remove {repository}:{tag}: {error}") from error
    return pruned


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class RegistryClient:
    """The few Registry HTTP API v2 calls retention needs, on a loopback registry."""

    address: str
    timeout: float = 30.0

    def _request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        host, _, port = self.address.rpartition(":")
        if host not in {"127.0.0.1", "localhost"}:
            raise RetentionError(f"only a loopback registry is pruned here, not {self.address}")
        connection = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            connection.request(method, path, headers=dict(headers or {}))
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        except OSError as error:
            raise RetentionError(f"registry {self.address}: {error}") from error
        finally:
            connection.close()

    def _json(self, path: str, headers: Mapping[str, str] | None = None) -> Any:
        status, _, body = self._request("GET", path, headers)
        if status != 200:
            raise RetentionError(f"GET {path}: HTTP {status}")
        return json.loads(body)

    def tags(self, name: str) -> list[str]:
        status, _, body = self._request("GET", f"/v2/{name}/tags/list")
        if status == 404:
            return []
        if status != 200:
            raise RetentionError(f"tags of {name}: HTTP {status}")
        return sorted(json.loads(body).get("tags") or [])

    def manifest(self, name: str, reference: str) -> tuple[str, dict[str, Any]]:
        """(digest, manifest) of a tag or digest."""
        status, headers, body = self._request(
            "GET", f"/v2/{name}/manifests/{reference}", {"Accept": MANIFEST_TYPES}
        )
        if status != 200:
            raise RetentionError(f"manifest {name}:{reference}: HTTP {status}")
        return headers.get("docker-content-digest", ""), json.loads(body)

    def labels(self, name: str, manifest: Mapping[str, Any]) -> dict[str, str]:
        """The image config's labels (the first platform's, for an index)."""
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            entries = manifest.get("manifests") or []
            if not entries:
                return {}
            _, manifest = self.manifest(name, str(entries[0]["digest"]))
        config = self._json(f"/v2/{name}/blobs/{manifest['config']['digest']}")
        labels = (config.get("config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def delete(self, name: str, digest: str) -> None:
        status, _, _ = self._request("DELETE", f"/v2/{name}/manifests/{digest}")
        if status not in (200, 202, 404):
            raise RetentionError(f"delete {name}@{digest}: HTTP {status}")


def registry_releases(registry: RegistryClient, name: str) -> list[Release]:
    entries = []
    for tag in registry.tags(name):
        digest, manifest = registry.manifest(name, tag)
        entries.append((digest, [tag], registry.labels(name, manifest)))
    return group(entries)


def prune_registry(
    registry: RegistryClient,
    name: str,
    keep: int = DEFAULT_KEEP,
    protected: Collection[str] = (),
    dry_run: bool = False,
) -> list[Release]:
    """Delete the manifests of pruned releases (blobs go at the registry's garbage-collect)."""
    pruned = select_prunable(registry_releases(registry, name), keep, protected)
    if not dry_run:
        for release in pruned:
            for digest in sorted(release.images):
                registry.delete(name, digest)
    return pruned
