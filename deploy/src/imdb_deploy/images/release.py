"""What a release is: one tree of the code plus one model artifact, and the record that says so.

The release tag is `<model version>-t<tree12>`: the model's version (its training time and data
digest) and the first 12 hex digits of the git tree the image was built from. A code-only change
(new tree, same model) and a model-only change (same tree, new model) each make a new tag; a
rebuild of the same tree with the same model makes the same tag. The tree, not the commit, so a
merge that changes no file (develop into main) names the release staging already verified. A
dirty working tree gets the tree of its working files (tracked ones), marked `dirty`.

The identity (everything but the image digests) is baked into the API image as
`/opt/release.json`, where the API checks that it names the model it serves and shows it on
/model/info. The full record, with each image's digest, is written to reports/release.json and
pushed to the registry as a tiny image of its own (`<registry>/mlops-imdb-release:<tag>`), so
anyone holding the tag can read what it is.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import docker

from imdb_deploy.images import metadata

RELEASE_FILE = "release.json"  # in the API image's build context, then /opt/release.json
RECORD_REPOSITORY = "mlops-imdb-release"
TREE_LENGTH = 12


class ReleaseError(ValueError):
    """The release cannot be named or its record cannot be read."""


@dataclass(frozen=True)
class ModelIdentity:
    """The model a release serves, from its verified artifact's manifest."""

    version: str
    manifest_sha256: str
    data_fingerprint: str
    metrics: dict[str, Any]

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelIdentity:
        try:
            return cls(
                version=str(manifest["version"]),
                manifest_sha256=str(manifest["manifest_sha256"]),
                data_fingerprint=str((manifest.get("data") or {}).get("fingerprint", "")),
                metrics=dict(manifest.get("metrics") or {}),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ReleaseError(f"the artifact's manifest names no model: {exc!r}") from None


@dataclass(frozen=True)
class Release:
    """One release: its tag, the code it was built from and the model it serves; `images`
    (service -> {"reference", "digest"}) once pushed."""

    release: str
    commit: str
    tree: str
    dirty: bool
    created: str
    source: str
    model: ModelIdentity
    images: dict[str, dict[str, str]] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What the API image carries (no digests: an image cannot name its own)."""
        data = asdict(self)
        del data["images"]
        return data

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def with_images(self, images: Mapping[str, Mapping[str, str]]) -> Release:
        return replace(self, images={**self.images, **{k: dict(v) for k, v in images.items()}})

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Release:
        try:
            return cls(
                release=str(data["release"]),
                commit=str(data["commit"]),
                tree=str(data["tree"]),
                dirty=bool(data["dirty"]),
                created=str(data["created"]),
                source=str(data["source"]),
                model=ModelIdentity(**data["model"]),
                images={str(k): dict(v) for k, v in dict(data.get("images") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReleaseError(f"not a release record: {exc!r}") from None


def release_tag(model_version: str, tree: str) -> str:
    """`<model version>-t<tree12>`, a valid image tag."""
    if len(tree) < TREE_LENGTH:
        raise ReleaseError(f"{tree!r} is not a git tree id")
    return metadata.check_tag(f"{model_version}-t{tree[:TREE_LENGTH]}")


def is_of_tree(tag: str, tree: str) -> bool:
    """Whether release `tag` was built from git tree `tree` (its `-t<tree12>` suffix)."""
    return tag.rpartition("-t")[2] == tree[:TREE_LENGTH]


def new_release(
    manifest: Mapping[str, Any], revision: metadata.Revision, source: str = metadata.DEFAULT_SOURCE
) -> Release:
    """The release of `revision`'s tree with the artifact whose manifest is `manifest`."""
    model = ModelIdentity.from_manifest(manifest)
    return Release(
        release=release_tag(model.version, revision.tree),
        commit=revision.sha,
        tree=revision.tree,
        dirty=revision.dirty,
        created=metadata.iso_time(revision.epoch),
        source=source,
        model=model,
    )


def write(release: Release, path: Path, *, identity_only: bool = False) -> Path:
    data = release.identity() if identity_only else release.record()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read(path: Path) -> Release:
    try:
        return Release.parse(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"{path}: {exc}") from None


def record_reference(registry: str | None, tag: str) -> str:
    return f"{metadata.repository(registry, RECORD_REPOSITORY)}:{metadata.check_tag(tag)}"


def scratch_image(
    client: docker.DockerClient, tag: str, files: Mapping[str, bytes], labels: Mapping[str, str]
) -> str:
    """An image of just `files` (FROM scratch), labelled, tagged `tag`; returns `tag`."""
    label_words = " ".join(f"{name}={json.dumps(value)}" for name, value in labels.items())
    dockerfile = "FROM scratch\n" + "".join(f"COPY {name} /{name}\n" for name in sorted(files))
    if label_words:
        dockerfile += f"LABEL {label_words}\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, rm=True)
    return tag


def build_record_image(client: docker.DockerClient, release: Release, registry: str | None) -> str:
    """The record as an image of one file (`/release.json`, FROM scratch), labelled with the
    release, so that the registry that holds the release holds its record; returns its tag."""
    body = json.dumps(release.record(), indent=2, sort_keys=True).encode() + b"\n"
    labels = {
        "org.opencontainers.image.version": release.release,
        "org.opencontainers.image.revision": release.commit,
        "io.mlops-imdb.release.record": "1",
    }
    reference = record_reference(registry, release.release)
    return scratch_image(client, reference, {RELEASE_FILE: body}, labels)
