"""The base image `python:3.11-slim`, pulled where a registry is reachable, else made locally.

Our machines reach no image registry, so Debian's debootstrap builds a minimal Debian root file
system with Python from Debian's packages, which is imported under the same name. Dockerfiles then
build unchanged with pull disabled. The root file system is cached as a tarball, keyed by what
went into it, so it is made once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import ImageNotFound

DEFAULT_BASE_IMAGE = "docker.io/library/python:3.11-slim"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Trimmed after bootstrap: caches and documentation no container needs.
TRIMMED = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")


class BaseImageError(RuntimeError):
    """The base image could not be pulled or made."""


@dataclass(frozen=True)
class RootfsRecipe:
    """What debootstrap installs; its digest names the cached tarball."""

    suite: str = "bookworm"
    arch: str = "amd64"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    mirror: str = DEBIAN_MIRROR

    def key(self) -> str:
        text = json.dumps([self.suite, self.arch, self.variant, self.packages, self.mirror])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def tarball_name(self) -> str:
        return f"debian-{self.suite}-{self.arch}-{self.key()}.tar"

    def debootstrap_argv(self, target: Path) -> list[str]:
        return [
            "debootstrap",
            f"--variant={self.variant}",
            f"--arch={self.arch}",
            f"--include={','.join(self.packages)}",
            self.suite,
            str(target),
            self.mirror,
        ]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlops-imdb"


def rootfs_tarball(recipe: RootfsRecipe, cache_dir: Path) -> Path:
    """The cached root file system tarball for `recipe`, made with debootstrap when missing."""
    tarball = cache_dir / recipe.tarball_name()
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        raise BaseImageError(
            "no base image: none can be pulled here and `debootstrap` is not installed "
            "(Debian: apt-get install debootstrap)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            recipe.debootstrap_argv(rootfs), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BaseImageError(f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr}")
        for relative in TRIMMED:
            _empty_directory(rootfs / relative)
        partial = Path(work) / "rootfs.tar"
        tar = shutil.which("tar") or "/bin/tar"
        subprocess.run(  # noqa: S603 - fixed argv, no shell
            [tar, "--sort=name", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            check=True,
        )
        partial.replace(tarball)
    return tarball


def _empty_directory(directory: Path) -> None:
    if directory.is_dir():
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def import_tarball(client: docker.DockerClient, tarball: Path, reference: str) -> str:
    """Import a root file system tarball as image `reference`; returns the image id."""
    repository, _, tag = reference.rpartition(":")
    with tarball.open("rb") as data:
        response = client.api.import_image_from_data(data, repository=repository, tag=tag)
    lines = [json.loads(line) for line in str(response).splitlines() if line.strip()]
    image_id = next(
        (str(line.get("id") or line.get("status")) for line in reversed(lines) if line),
        "",
    )
    if not image_id.startswith("sha256:"):
        raise BaseImageError(f"import of {tarball.name} returned no image id: {response!r}")
    image = client.images.get(image_id)
    # Docker honours the tag given at import; Podman's compatible API tags `latest` instead.
    image.tag(repository, tag)
    for stray in image.tags:
        if stray != reference and stray.startswith(f"{repository}:"):
            client.images.remove(stray)
    return image_id


def ensure_base_image(
    client: docker.DockerClient,
    reference: str = DEFAULT_BASE_IMAGE,
    *,
    source: str = "debootstrap",
    cache_dir: Path | None = None,
    recipe: RootfsRecipe | None = None,
) -> str:
    """Make sure the engine has `reference`: present, pulled (`source="pull"`) or made locally."""
    try:
        return str(client.images.get(reference).id)
    except ImageNotFound:
        pass
    if source == "pull":
        return str(client.images.pull(reference).id)
    if source != "debootstrap":
        raise BaseImageError(f"unknown base image source {source!r} (pull or debootstrap)")
    tarball = rootfs_tarball(recipe or RootfsRecipe(), cache_dir or default_cache_dir())
    return import_tarball(client, tarball, reference)
