"""What the engine helpers write and run, checked without an engine."""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from imdb_deploy.engine import base_image, podman, registry

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def test_registries_conf_marks_local_registries_insecure() -> None:
    config = tomllib.loads(podman.registries_conf(["127.0.0.1:5000", "127.0.0.1:5001"]))
    assert config["unqualified-search-registries"] == ["docker.io"]
    assert config["registry"] == [
        {"location": "127.0.0.1:5000", "insecure": True},
        {"location": "127.0.0.1:5001", "insecure": True},
    ]


def test_containers_conf_uses_runc_and_low_ulimits() -> None:
    config = tomllib.loads(podman.CONTAINERS_CONF)
    assert config["engine"]["runtime"] == "runc"
    assert config["containers"]["default_ulimits"] == ["nofile=1024:1024", "nproc=1024:1024"]


def test_podman_service_argv_with_and_without_own_storage(tmp_path: Path) -> None:
    shared = podman.PodmanService(tmp_path)
    assert shared.argv() == [
        "podman",
        "system",
        "service",
        "--time=0",
        f"unix://{tmp_path}/podman.sock",
    ]
    own = podman.PodmanService(tmp_path, storage_dir=tmp_path / "storage")
    assert own.argv()[1] == f"--root={tmp_path}/storage/root"
    assert own.runroot is not None
    assert len(str(own.runroot)) <= 50
    assert own.env()["CONTAINERS_CONF"] == str(tmp_path / "containers.conf")


def test_missing_podman_is_a_clear_error(tmp_path: Path) -> None:
    service = podman.PodmanService(tmp_path, podman="podman-is-not-installed")
    with pytest.raises(podman.EngineError, match="apt-get install podman runc"):
        service.start()


def test_nothing_answers_on_a_dead_socket(tmp_path: Path) -> None:
    assert not podman.answers(f"unix://{tmp_path}/nothing.sock", timeout=1)
    assert podman.find_docker_engine({"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}) is None


def test_registry_config_listens_where_asked(tmp_path: Path) -> None:
    config = yaml.safe_load(registry.registry_config(tmp_path / "blobs", "127.0.0.1:5123"))
    assert config["http"]["addr"] == "127.0.0.1:5123"
    assert config["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "blobs")
    assert config["storage"]["delete"]["enabled"] is True


def test_registry_refuses_non_loopback_addresses() -> None:
    with pytest.raises(registry.RegistryError, match="loopback"):
        registry.answers("10.0.0.1:5000")


def test_missing_registry_binary_is_a_clear_error(tmp_path: Path) -> None:
    local = registry.LocalRegistry(tmp_path, "127.0.0.1:1", executable="no-such-registry")
    with pytest.raises(registry.RegistryError, match="apt-get install docker-registry"):
        local.start()


def test_rootfs_recipe_key_changes_with_its_inputs() -> None:
    default = base_image.RootfsRecipe()
    assert default.key() == base_image.RootfsRecipe().key()
    assert default.key() != base_image.RootfsRecipe(arch="arm64").key()
    assert default.tarball_name().startswith("debian-bookworm-amd64-")
    argv = default.debootstrap_argv(Path("/target"))
    assert argv[:3] == ["debootstrap", "--variant=minbase", "--arch=amd64"]
    assert "--include=python3,python3-venv,ca-certificates" in argv


def test_a_cached_tarball_is_reused(tmp_path: Path) -> None:
    recipe = base_image.RootfsRecipe(suite="cached")
    cached = tmp_path / recipe.tarball_name()
    cached.write_bytes(b"tar")
    assert base_image.rootfs_tarball(recipe, tmp_path) == cached


@pytest.mark.integration  # the real debootstrap, failing on a missing mirror
def test_failing_debootstrap_is_reported_and_leaves_no_tarball(
    tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    require_tool("debootstrap")
    recipe = base_image.RootfsRecipe(mirror=f"file://{tmp_path}/no-mirror")
    with pytest.raises(base_image.BaseImageError, match="debootstrap failed"):
        base_image.rootfs_tarball(recipe, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_rootfs_is_trimmed_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in debootstrap (the real one is exercised by the engine tests on a cold cache).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "debootstrap"
    fake.write_text(
        "#!/bin/sh\n"
        "target=$(echo \"$@\" | awk '{print $(NF-1)}')\n"  # argv ends: suite target mirror
        'mkdir -p "$target/etc" "$target/usr/share/doc/python3" "$target/var/lib/apt/lists"\n'
        'echo bookworm > "$target/etc/debian_version"\n'
        'echo docs > "$target/usr/share/doc/python3/README"\n'
        'echo list > "$target/var/lib/apt/lists/main"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    recipe = base_image.RootfsRecipe(suite="fake")
    tarball = base_image.rootfs_tarball(recipe, tmp_path / "cache")
    assert tarball.name == recipe.tarball_name()
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert "./etc/debian_version" in names
    assert "./usr/share/doc" in names
    assert not [
        name for name in names if name.startswith(("./usr/share/doc/", "./var/lib/apt/lists/"))
    ]
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [tarball.name]


def test_mount_points_below_are_found_deepest_first(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    mountinfo = "\n".join(
        [
            "22 1 0:21 / /proc rw - proc proc rw",
            f"90 22 0:40 / {storage}/root/overlay rw - overlay overlay rw",
            f"91 90 0:41 / {storage}/root/overlay/abc/merged rw - overlay overlay rw",
            f"92 22 0:42 / {storage}-other rw - tmpfs tmpfs rw",
            "short line",
        ]
    )
    assert podman.mount_points_below(storage, mountinfo) == [
        storage / "root/overlay/abc/merged",
        storage / "root/overlay",
    ]
