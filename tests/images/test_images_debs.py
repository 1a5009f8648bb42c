"""Debian packages for the target architecture, through a stand-in `apt-get`."""

from __future__ import annotations

from pathlib import Path

import pytest

from imdb_deploy.images import debs
from imdb_deploy.images.platforms import PLATFORMS

FAKE_APT = """#!/bin/sh
echo "$@" >> "$APT_LOG"
arch=amd64
for arg in "$@"; do
  case "$arg" in -oAPT::Architecture=*) arch="${arg#-oAPT::Architecture=}";; esac
done
last=""
for arg in "$@"; do
  if [ "$last" = download ]; then : > "${arg}_1.0_${arch}.deb"; fi
  case "$arg" in download) last=download;; esac
done
case "$*" in *fail*) echo "E: Unable to locate package" >&2; exit 100;; esac
exit 0
"""


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(FAKE_APT)
    script.chmod(0o755)
    log = tmp_path / "apt.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("APT_LOG", str(log))
    return log


def foreign_and_native() -> tuple[str, str]:
    native = "linux/amd64" if PLATFORMS["linux/amd64"].is_native() else "linux/arm64"
    foreign = "linux/arm64" if native == "linux/amd64" else "linux/amd64"
    return native, foreign


def test_native_download_uses_the_host_lists(fake_apt: Path, tmp_path: Path) -> None:
    native, _ = foreign_and_native()
    platform = PLATFORMS[native]
    found = debs.download_debs(["libgomp1"], platform, tmp_path / "cache")
    assert [p.name for p in found] == [f"libgomp1_1.0_{platform.debian_arch}.deb"]
    assert fake_apt.read_text().split() == ["-q", "download", "libgomp1"]
    # Cached: apt-get is not asked again.
    assert debs.download_debs(["libgomp1"], platform, tmp_path / "cache") == found
    assert len(fake_apt.read_text().splitlines()) == 1


def test_foreign_download_uses_a_private_apt_state(fake_apt: Path, tmp_path: Path) -> None:
    _, foreign = foreign_and_native()
    platform = PLATFORMS[foreign]
    found = debs.download_debs(["libgomp1"], platform, tmp_path / "cache")
    assert found[0].name.endswith(f"_{platform.debian_arch}.deb")
    update, download = fake_apt.read_text().splitlines()
    assert update.endswith(" update")
    assert f"-oAPT::Architectures={platform.debian_arch}" in update
    assert str(tmp_path / "cache" / "apt" / platform.debian_arch) in update
    assert download.endswith(" download libgomp1")


def test_no_packages_means_no_apt(fake_apt: Path, tmp_path: Path) -> None:
    assert debs.download_debs([], PLATFORMS["linux/amd64"], tmp_path) == []
    assert not fake_apt.exists()


def test_apt_failure_is_reported(fake_apt: Path, tmp_path: Path) -> None:
    native, _ = foreign_and_native()
    with pytest.raises(debs.DebError, match="Unable to locate"):
        debs.download_debs(["fail"], PLATFORMS[native], tmp_path)


def test_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    native, _ = foreign_and_native()
    with pytest.raises(debs.DebError, match="not available"):
        debs.download_debs(["libgomp1"], PLATFORMS[native], tmp_path)
