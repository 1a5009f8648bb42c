"""Debian packages for the target architecture, downloaded on the host for a network-free build.

For this machine's own architecture `apt-get download` uses the host's package lists. For a
foreign one it uses a private apt state under the cache (its own lists, an empty dpkg status),
so the host's apt configuration is never changed (no `dpkg --add-architecture`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from imdb_deploy.images.platforms import Platform


class DebError(RuntimeError):
    """A Debian package could not be downloaded."""


def apt_options(state: Path, arch: str) -> list[str]:
    """apt options for a private state directory that only knows `arch`."""
    return [
        f"-oAPT::Architecture={arch}",
        f"-oAPT::Architectures={arch}",
        f"-oDir::State={state / 'state'}",
        f"-oDir::State::status={state / 'status'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oDebug::NoLocking=1",
    ]


def _apt(argv: Sequence[str], cwd: Path) -> None:
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise DebError("`apt-get` is not available to download Debian packages")
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [apt_get, "-q", *argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DebError(f"apt-get {' '.join(argv)} failed:\n{result.stderr[-2000:]}")


def download_debs(packages: Sequence[str], platform: Platform, cache_dir: Path) -> list[Path]:
    """The .deb files of `packages` for `platform`, cached under `cache_dir/debs/ARCH`."""
    if not packages:
        return []
    directory = cache_dir / "debs" / platform.debian_arch
    directory.mkdir(parents=True, exist_ok=True)
    found = {
        name: sorted(directory.glob(f"{name}_*_{platform.debian_arch}.deb")) for name in packages
    }
    missing = [name for name, files in found.items() if not files]
    if missing:
        options: list[str] = []
        if not platform.is_native():
            state = cache_dir / "apt" / platform.debian_arch
            for sub in ("state/lists/partial", "cache/archives/partial"):
                (state / sub).mkdir(parents=True, exist_ok=True)
            (state / "status").touch()
            options = apt_options(state, platform.debian_arch)
            _apt([*options, "update"], directory)
        _apt([*options, "download", *missing], directory)
    debs = []
    for name in packages:
        files = sorted(directory.glob(f"{name}_*_{platform.debian_arch}.deb"))
        if not files:
            raise DebError(f"no {name} .deb for {platform.debian_arch} after apt-get download")
        debs.append(files[-1])
    return debs
