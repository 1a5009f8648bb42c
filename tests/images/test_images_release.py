"""What a release is: its tag (code tree + model), its record, and the git tree it names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imdb_deploy.images import __main__ as images_cli
from imdb_deploy.images import build, metadata
from imdb_deploy.images import release as releases

MANIFEST = {
    "version": "20261203.101500-22a474db", "manifest_sha256": "d" * 64,
    "data": {"fingerprint": "c" * 64, "rows": 10}, "metrics": {"test": {"rmse": 0.9}},
}  # fmt: skip
REVISION = metadata.Revision(
    "a" * 40, 1700000000, dirty=False, tree="0123456789abcdef" * 2 + "01234567"
)


def test_the_tag_changes_with_the_code_or_the_model_and_only_then() -> None:
    tag = releases.release_tag("20261203.101500-22a474db", REVISION.tree)
    assert tag == "20261203.101500-22a474db-t0123456789ab"
    assert releases.release_tag("20261203.101500-22a474db", REVISION.tree) == tag  # same inputs
    assert releases.release_tag("20261203.101500-22a474db", "f" * 40) != tag  # code-only change
    assert releases.release_tag("20261204.090000-22a474db", REVISION.tree) != tag  # model-only
    assert releases.is_of_tree(tag, REVISION.tree)
    assert not releases.is_of_tree(tag, "f" * 40)
    with pytest.raises(releases.ReleaseError, match="not a git tree"):
        releases.release_tag("v", "abc")
    with pytest.raises(metadata.MetadataError):
        releases.release_tag("not a tag!", REVISION.tree)


def test_new_release_names_commit_tree_and_model(tmp_path: Path) -> None:
    release = releases.new_release(MANIFEST, REVISION, "https://example.org/r")
    assert release.release == "20261203.101500-22a474db-t0123456789ab"
    assert (release.commit, release.tree, release.dirty) == ("a" * 40, REVISION.tree, False)
    assert release.created == "2023-11-14T22:13:20Z"
    assert release.model == releases.ModelIdentity(
        "20261203.101500-22a474db", "d" * 64, "c" * 64, {"test": {"rmse": 0.9}}
    )
    # The image carries the identity; the record adds the digests once pushed.
    identity = json.loads(
        releases.write(release, tmp_path / "i.json", identity_only=True).read_text()
    )
    assert "images" not in identity
    pushed = release.with_images({"api": {"reference": "r/a:t", "digest": "sha256:1"}})
    assert releases.read(releases.write(pushed, tmp_path / "r.json")) == pushed
    assert release.images == {}  # with_images made a new one


@pytest.mark.parametrize(
    "manifest", [{}, {"version": "v"}, {"version": "v", "manifest_sha256": "x", "data": 3}]
)
def test_a_manifest_without_a_model_identity_is_refused(manifest: dict[str, object]) -> None:
    with pytest.raises(releases.ReleaseError, match="names no model"):
        releases.new_release(manifest, REVISION)


@pytest.mark.parametrize("content", ["", "[]", "{}", '{"release": "x"}'])
def test_an_unreadable_record_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "release.json"
    path.write_text(content)
    with pytest.raises(releases.ReleaseError):
        releases.read(path)
    with pytest.raises(releases.ReleaseError, match=r"none\.json"):
        releases.read(tmp_path / "none.json")


def test_record_reference_is_a_repository_of_its_own() -> None:
    assert (
        releases.record_reference("127.0.0.1:5000", "m-t1")
        == "127.0.0.1:5000/mlops-imdb-release:m-t1"
    )
    assert releases.record_reference(None, "m-t1") == "localhost/mlops-imdb-release:m-t1"


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_the_tree_of_a_dirty_checkout_is_its_working_files(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("a = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-qm", "first")
    clean = metadata.git_revision(tmp_path)
    assert not clean.dirty
    assert clean.tree == git(tmp_path, "rev-parse", "HEAD^{tree}")
    (tmp_path / "code.py").write_text("a = 2\n")
    (tmp_path / "untracked.txt").write_text("not part of the release\n")
    dirty = metadata.git_revision(tmp_path)
    assert dirty.dirty
    assert dirty.sha == clean.sha
    assert dirty.tree != clean.tree  # a code change is a new release, committed or not
    assert git(tmp_path, "status", "--porcelain") == "M code.py\n?? untracked.txt".strip()
    git(tmp_path, "commit", "-qam", "second")
    assert metadata.git_revision(tmp_path).tree == dirty.tree  # committing it changes nothing
    (tmp_path / "code.py").write_text("a = 1\n")
    assert metadata.git_revision(tmp_path).tree == clean.tree  # back to the first tree


def test_the_mlflow_run_is_tagged_with_the_release_it_became(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "bin" / "imdb-trainer"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "argv"}\nexit "${{TRAINER_EXIT:-0}}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    artifact = tmp_path / "model"
    release = releases.new_release(MANIFEST, REVISION).with_images(
        {"api": {"reference": "r/a:t", "digest": "sha256:" + "1" * 64}}
    )
    # Without tracking configured, nothing is asked of MLflow.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    images_cli.tag_tracked_run(artifact, release)
    assert not (tmp_path / "argv").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    images_cli.tag_tracked_run(artifact, release)  # trained without tracking: said, not failed
    assert "trained without tracking" in capsys.readouterr().out
    (tmp_path / "model.mlflow-run.json").write_text("{}")
    images_cli.tag_tracked_run(artifact, release)
    assert (tmp_path / "argv").read_text().split() == [
        "track-release", f"--artifact={artifact}", f"--release={release.release}",
        "--digest=sha256:" + "1" * 64,
    ]  # fmt: skip
    monkeypatch.setenv("TRAINER_EXIT", "7")
    with pytest.raises(build.BuildError, match="could not be tagged"):
        images_cli.tag_tracked_run(artifact, release)
