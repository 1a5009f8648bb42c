"""The build context: assembled in a directory from explicit inputs only.

Nothing from the working tree is sent except what is listed here, so no stray file (an `.env`,
a token in a notebook) can end up in a layer:

    Dockerfile          the service's Dockerfile
    requirements.txt    third-party pins with hashes, from `uv export --locked`
    wheels/             their wheels for the target platform (from the wheel cache)
    project/            our wheels (uv build) and project/requirements.txt with their hashes
    model/              the API's model artifact
    debs/               Debian packages the wheels need (libgomp1 for the trainer)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import parse_wheel_filename

from imdb_deploy.images import debs, requirements
from imdb_deploy.images.platforms import Platform
from imdb_deploy.images.services import ServiceImage

MANIFEST = "manifest.json"


class ContextError(RuntimeError):
    """The build context could not be assembled."""


@dataclass(frozen=True)
class BuildContext:
    """An assembled context and the facts the tags and labels are made from."""

    path: Path
    service: ServiceImage
    platform: Platform
    requirements_key: str
    project_versions: dict[str, str]
    model_version: str | None


def artifact_version(artifact: Path) -> str:
    """The version in an artifact's manifest (the image build verifies the rest)."""
    try:
        manifest = json.loads((artifact / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise ContextError(f"{artifact} is not a model artifact: {error}") from error
    version = manifest.get("version") if isinstance(manifest, dict) else None
    if not isinstance(version, str) or not version:
        raise ContextError(f"{artifact / MANIFEST} has no version")
    return version


def copy_artifact(artifact: Path, target: Path) -> None:
    """Copy the artifact's regular files; a symlink is refused (it could point anywhere)."""
    for source in sorted(artifact.rglob("*")):
        relative = source.relative_to(artifact)
        if source.is_symlink():
            raise ContextError(f"artifact {artifact} contains a symlink: {relative}")
        if source.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / relative)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a cached file into the context (same file system), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def assemble(
    root: Path,
    service: ServiceImage,
    platform: Platform,
    directory: Path,
    *,
    cache_dir: Path,
    artifact: Path | None = None,
) -> BuildContext:
    """Fill `directory` (empty or missing) with the build context of `service` for `platform`."""
    if service.needs_artifact and artifact is None:
        raise ContextError(f"the {service.name} image needs a model artifact (--artifact DIR)")
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ContextError(f"build context directory {directory} is not empty")
    shutil.copyfile(service.dockerfile(root), directory / "Dockerfile")

    pins = requirements.export_requirements(
        root, service.distribution, directory / "requirements.txt"
    )
    cached = requirements.cached_wheels(pins, platform, cache_dir)
    (directory / "wheels").mkdir()
    for wheel in sorted(cached.glob("*.whl")):
        link_or_copy(wheel, directory / "wheels" / wheel.name)

    project = directory / "project"
    built = requirements.build_project_wheels(root, service.wheels, project)
    (project / "requirements.txt").write_text(requirements.hashed_requirements(built))
    versions = {str(parse_wheel_filename(w.name)[0]): str(parse_wheel_filename(w.name)[1])
                for w in built}  # fmt: skip

    (directory / "debs").mkdir()
    for deb in debs.download_debs(service.debs, platform, cache_dir):
        link_or_copy(deb, directory / "debs" / deb.name)

    model_version = None
    (directory / "model").mkdir()
    if service.needs_artifact and artifact is not None:
        model_version = artifact_version(artifact)
        copy_artifact(artifact, directory / "model")
    return BuildContext(
        path=directory,
        service=service,
        platform=platform,
        requirements_key=cached.name,
        project_versions=versions,
        model_version=model_version,
    )
