"""What an image is called and says about itself: versions, tags, OCI labels, build args.

Versions (one string per release, also the `org.opencontainers.image.version` label):
  api      the model artifact's version from its manifest (`YYYYMMDD.HHMMSS-<data digest>`), so
           an API image tag names exactly one model: image tag == release == model version.
  trainer  the imdb-trainer project version plus the commit, `0.1.0-g<sha12>`: the trainer
           ships code, not a model, so the commit is what distinguishes two builds.
Every image is also tagged with the commit (`<sha12>`, `-dirty` when the tree had changes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SHA_LENGTH = 12
DEFAULT_SOURCE = "https://github.com/mlops-imdb/mlops-imdb"
# Docker's tag grammar.
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Build args whose name says they carry a secret are refused: classic builders record ARG
# values in the image history, where anyone who can pull the image can read them.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE)", re.I)
ALLOWED_BUILD_ARGS = frozenset(
    {
        "BASE_IMAGE",
        "SOURCE_DATE_EPOCH",
        "VERSION",
        "REVISION",
        "CREATED",
        "SOURCE",
        "MODEL_VERSION",
        "VERIFY_MODEL",
    }
)


class MetadataError(ValueError):
    """A version, tag or build argument is not acceptable."""


@dataclass(frozen=True)
class Revision:
    """The commit a build comes from."""

    sha: str
    epoch: int
    dirty: bool
    tree: str = ""  # the git tree of what was built: HEAD's, or the working files' when dirty

    @property
    def short(self) -> str:
        return self.sha[:SHA_LENGTH]

    @property
    def tag(self) -> str:
        """The commit tag; a dirty tree never gets the clean commit's tag."""
        return self.short + ("-dirty" if self.dirty else "")


def _git(root: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    git = shutil.which("git")
    if git is None:
        raise MetadataError("`git` is not on PATH")
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [git, "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if result.returncode != 0:
        raise MetadataError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def git_revision(root: Path) -> Revision:
    """HEAD's sha and commit time (the SOURCE_DATE_EPOCH), and whether tracked files changed."""
    sha = _git(root, "rev-parse", "HEAD")
    epoch = int(_git(root, "log", "-1", "--format=%ct", "HEAD"))
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return Revision(sha=sha, epoch=epoch, dirty=dirty, tree=working_tree(root, dirty))


def working_tree(root: Path, dirty: bool) -> str:
    """The tree id of HEAD, or (dirty) of the tracked files as they are now: written through a
    throw-away index, so the user's own index and staged changes are left alone."""
    if not dirty:
        return _git(root, "rev-parse", "HEAD^{tree}")
    with tempfile.TemporaryDirectory(prefix="mlops-tree-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(root, "read-tree", "HEAD", env=env)
        _git(root, "add", "--update", "--", ".", env=env)
        return _git(root, "write-tree", env=env)


def source_url(environ: Mapping[str, str]) -> str:
    """The `source` label: MLOPS_IMAGE_SOURCE, else the GitHub Actions repository, else ours."""
    if environ.get("MLOPS_IMAGE_SOURCE"):
        return environ["MLOPS_IMAGE_SOURCE"]
    if environ.get("GITHUB_SERVER_URL") and environ.get("GITHUB_REPOSITORY"):
        return f"{environ['GITHUB_SERVER_URL']}/{environ['GITHUB_REPOSITORY']}"
    return DEFAULT_SOURCE


def iso_time(epoch: int) -> str:
    """RFC 3339 UTC time for the `created` label."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag):
        raise MetadataError(f"{tag!r} is not a valid image tag")
    return tag


def trainer_version(project_version: str, revision: Revision) -> str:
    return check_tag(f"{project_version}-g{revision.tag}")


def api_version(model_version: str) -> str:
    return check_tag(model_version)


def repository(registry: str | None, name: str) -> str:
    """`<registry>/<name>`, or `localhost/<name>` without a registry (Podman's local prefix)."""
    return f"{registry or 'localhost'}/{name}"


def image_tags(repo: str, version: str, revision: Revision, suffix: str = "") -> list[str]:
    """`repo:<version>` and `repo:<sha>`; `suffix` (e.g. `-arm64`) marks a per-platform image."""
    return [f"{repo}:{check_tag(version + suffix)}", f"{repo}:{check_tag(revision.tag + suffix)}"]


def build_args(
    *,
    version: str,
    revision: Revision,
    base_image: str,
    source: str = DEFAULT_SOURCE,
    model_version: str | None = None,
    verify_model: bool = True,
) -> dict[str, str]:
    """The Dockerfiles' build arguments; `created` is the commit time, so it is reproducible.

    `verify_model=False` (cross builds under emulation only) skips the build-time model check.
    """
    args = {
        "BASE_IMAGE": base_image,
        "SOURCE_DATE_EPOCH": str(revision.epoch),
        "VERSION": version,
        "REVISION": revision.sha + ("-dirty" if revision.dirty else ""),
        "CREATED": iso_time(revision.epoch),
        "SOURCE": source,
    }
    if model_version is not None:
        args["MODEL_VERSION"] = model_version
        args["VERIFY_MODEL"] = "1" if verify_model else "0"
    return check_build_args(args)


def check_build_args(args: Mapping[str, str]) -> dict[str, str]:
    """Only the known build arguments, and never one named like a secret."""
    for name in args:
        if SECRET_NAME.search(name):
            raise MetadataError(
                f"build arg {name} looks like a secret; build args are recorded in the image "
                "history (use a runtime secret or a BuildKit secret mount instead)"
            )
        if name not in ALLOWED_BUILD_ARGS:
            raise MetadataError(f"unknown build arg {name}")
    return dict(args)


def expected_labels(args: Mapping[str, str]) -> dict[str, str]:
    """The OCI labels an image built with `args` must carry."""
    labels = {
        "org.opencontainers.image.source": args["SOURCE"],
        "org.opencontainers.image.revision": args["REVISION"],
        "org.opencontainers.image.version": args["VERSION"],
        "org.opencontainers.image.created": args["CREATED"],
    }
    if "MODEL_VERSION" in args:
        labels["io.mlops-imdb.model.version"] = args["MODEL_VERSION"]
    return labels
