"""An arm64 API image built here and run under qemu emulation (slow: only with
MLOPS_TEST_ARM64=1). Needs qemu-user-static with binfmt_misc registered for aarch64."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from imdb_deploy.engine import base_image
from imdb_deploy.images import build, engine_client, services
from imdb_deploy.images.platforms import EMULATED_AARCH64_CPUINFO, PLATFORMS
from tests.images.conftest import ImageEngine
from tests.support import free_port

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(
        os.environ.get("MLOPS_TEST_ARM64") != "1", reason="arm64 emulation: set MLOPS_TEST_ARM64=1"
    ),
]
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback http)
        return json.loads(answer.read())


def test_arm64_api_image_builds_and_answers_under_emulation(
    image_engine: ImageEngine,
    fixture_model: Path,
    repo_root: Path,
    tmp_path: Path,
    require: Callable[[bool, str], None],
) -> None:
    require(BINFMT.is_file(), "binfmt_misc registered for qemu-aarch64 (qemu-user-static)")
    arm64 = PLATFORMS["linux/arm64"]
    client = image_engine.client
    recipe = base_image.RootfsRecipe(arch="arm64")
    # Without the cached root file system, debootstrap runs under emulation (about 5 minutes).
    require(
        (image_engine.cache_dir / recipe.tarball_name()).exists()
        or shutil.which("debootstrap") is not None,
        "debootstrap (or a cached arm64 root file system)",
    )
    started = time.monotonic()
    base = engine_client.ensure_platform_base(client, arm64, "debootstrap", image_engine.cache_dir)
    print(f"\narm64 base ready in {time.monotonic() - started:.1f} s")
    built = build.build_service(
        client, repo_root, services.SERVICES["api"], arm64, base_image=base,
        revision=image_engine.revision, cache_dir=image_engine.cache_dir,
        registry=image_engine.namespace, artifact=fixture_model,
    )  # fmt: skip
    print(f"arm64 API image built in {built.seconds:.1f} s: {built.tags}")
    assert built.tags[0].endswith("-arm64")
    assert client.images.get(built.reference).attrs["Architecture"] == "arm64"

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EMULATED_AARCH64_CPUINFO)
    port = free_port()
    started = time.monotonic()
    container = client.containers.run(
        built.reference,
        detach=True,
        read_only=True,
        network_mode="host",
        environment={"IMDB_API_PORT": str(port), "IMDB_API_HOST": "127.0.0.1"},
        volumes={str(cpuinfo): {"bind": "/proc/cpuinfo", "mode": "ro"}},
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = get_json(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                container.reload()
                assert container.status == "running", container.logs().decode()[-2000:]
                assert time.monotonic() < deadline, container.logs().decode()[-2000:]
                time.sleep(0.5)
        print(f"arm64 container answered /health after {time.monotonic() - started:.1f} s")
        assert health == {"status": "ok"}
        machine = container.exec_run(
            ["python3", "-c", "import platform; print(platform.machine())"]
        )
        assert isinstance(machine.output, bytes)
        assert machine.output.decode().strip() == "aarch64"
    finally:
        container.remove(force=True)
