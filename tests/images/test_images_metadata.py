"""Versions, tags, labels and build arguments of the service images."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_deploy.images import metadata
from imdb_deploy.images.platforms import PLATFORMS, PlatformError, parse_platform

REVISION = metadata.Revision(sha="0123456789abcdef" * 2 + "01234567", epoch=1700000000, dirty=False)


def test_versions_and_tags() -> None:
    assert metadata.api_version("20261126.125734-22a474db") == "20261126.125734-22a474db"
    assert metadata.trainer_version("0.1.0", REVISION) == "0.1.0-g0123456789ab"
    dirty = metadata.Revision(REVISION.sha, REVISION.epoch, dirty=True)
    assert metadata.trainer_version("0.1.0", dirty) == "0.1.0-g0123456789ab-dirty"
    repo = metadata.repository("127.0.0.1:5000", "mlops-imdb-api")
    assert metadata.image_tags(repo, "20261126.1-x", REVISION) == [
        "127.0.0.1:5000/mlops-imdb-api:20261126.1-x",
        "127.0.0.1:5000/mlops-imdb-api:0123456789ab",
    ]
    assert metadata.image_tags(repo, "v", REVISION, "-arm64")[1].endswith(":0123456789ab-arm64")
    assert metadata.repository(None, "x") == "localhost/x"


@pytest.mark.parametrize("tag", ["", "-leading-dash", "has space", "a" * 129, "sl/ash"])
def test_invalid_tags_are_refused(tag: str) -> None:
    with pytest.raises(metadata.MetadataError):
        metadata.check_tag(tag)


def test_build_args_and_labels_come_from_the_commit() -> None:
    args = metadata.build_args(
        version="1.0", revision=REVISION, base_image="python:3.11-slim", model_version="m1"
    )
    assert args["SOURCE_DATE_EPOCH"] == "1700000000"
    assert args["CREATED"] == "2023-11-14T22:13:20Z"
    labels = metadata.expected_labels(args)
    assert labels["org.opencontainers.image.revision"] == REVISION.sha
    assert labels["org.opencontainers.image.version"] == "1.0"
    assert labels["io.mlops-imdb.model.version"] == "m1"
    trainer = metadata.build_args(version="1.0", revision=REVISION, base_image="b")
    assert args["VERIFY_MODEL"] == "1"
    assert "MODEL_VERSION" not in trainer
    assert "VERIFY_MODEL" not in trainer
    assert "io.mlops-imdb.model.version" not in metadata.expected_labels(trainer)


@pytest.mark.parametrize(
    "name", ["API_TOKEN", "GITHUB_TOKEN", "DB_PASSWORD", "AWS_SECRET", "APIKEY"]
)
def test_secret_looking_build_args_are_refused(name: str) -> None:
    with pytest.raises(metadata.MetadataError, match="looks like a secret"):
        metadata.check_build_args({"VERSION": "1", name: "x"})


def test_unknown_build_args_are_refused() -> None:
    with pytest.raises(metadata.MetadataError, match="unknown build arg"):
        metadata.check_build_args({"HTTP_PROXY": "http://user:pw@proxy"})


def test_git_revision_of_this_repository(repo_root: Path) -> None:
    revision = metadata.git_revision(repo_root)
    assert len(revision.sha) == 40
    assert revision.epoch > 1_500_000_000
    assert revision.tag.startswith(revision.sha[:12])


def test_git_revision_outside_a_repository(tmp_path: Path) -> None:
    with pytest.raises(metadata.MetadataError):
        metadata.git_revision(tmp_path)


def test_platforms() -> None:
    arm = parse_platform("linux/arm64/v8")
    assert arm is PLATFORMS["linux/arm64"]
    tags = arm.pip_platforms()
    assert tags[0] == "manylinux_2_36_aarch64"
    assert "manylinux_2_28_aarch64" in tags
    assert tags[-1] == "manylinux2014_aarch64"
    assert arm.suffix == "arm64"
    with pytest.raises(PlatformError):
        parse_platform("windows/amd64")


def test_source_label() -> None:
    assert metadata.source_url({}) == metadata.DEFAULT_SOURCE
    github = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r"}
    assert metadata.source_url(github) == "https://github.com/o/r"
    assert metadata.source_url({**github, "MLOPS_IMAGE_SOURCE": "https://x/y"}) == "https://x/y"
