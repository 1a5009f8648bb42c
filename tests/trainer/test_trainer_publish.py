"""Versioning, provenance and atomic publication."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from imdb_trainer import publish as publish_module
from imdb_trainer.publish import (
    OutputExistsError,
    check_target,
    git_revision,
    library_versions,
    make_version,
    publish,
    staging,
)


def test_version_sorts_by_time() -> None:
    early = make_version(datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "abcdef0123")
    late = make_version(datetime(2025, 11, 2, 3, 4, 5, tzinfo=timezone.utc), "00000000")
    assert early == "20250102.030405-abcdef01"
    assert sorted([late, early]) == [early, late]


def test_staging_is_removed_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "artifact"

    def interrupted() -> None:
        with staging(out) as stage:
            (stage / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted()
    assert list(tmp_path.iterdir()) == []


def test_publish_new_and_replace(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    with staging(out) as stage:
        (stage / "a").write_text("1")
        publish(stage, out, overwrite=False)
    assert (out / "a").read_text() == "1"
    assert out.stat().st_mode & 0o777 == 0o755
    with pytest.raises(OutputExistsError):
        check_target(out, overwrite=False)
    with staging(out) as stage:
        (stage / "b").write_text("2")
        publish(stage, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_failed_replace_restores_the_old_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "old").write_text("old")
    original = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name.startswith(".artifact.tmp-"):
            raise OSError("disk full")
        return original(self, target)

    monkeypatch.setattr(Path, "rename", rename)

    def replace() -> None:
        with staging(out) as stage:
            publish(stage, out, overwrite=True)

    with pytest.raises(OSError, match="disk full"):
        replace()
    assert (out / "old").read_text() == "old"


def test_git_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert git_revision(tmp_path) == {"revision": None, "dirty": None}  # not a repository
    if shutil.which("git"):
        info = git_revision(Path(__file__).parent)
        assert info["revision"] is None or len(str(info["revision"])) == 40
    monkeypatch.setattr("imdb_trainer.publish.shutil.which", lambda _: None)
    assert git_revision(tmp_path) == {"revision": None, "dirty": None}


def test_library_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = library_versions()
    assert versions["numpy"] != "not installed"
    monkeypatch.setattr(publish_module, "LIBRARIES", ("no-such-distribution-xyz",))
    assert library_versions()["no-such-distribution-xyz"] == "not installed"
