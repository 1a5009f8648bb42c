"""A release's publication for real, on a tiny image of both platforms (no emulation needed:
nothing runs in them): each platform pushed, one manifest list per tag, the evidence and the
signatures beside it; then a host's engine, with the policy `setup` installs, pulls the list by
digest and gets the platform it asks for, and refuses it once a signature is missing."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from imdb_deploy.images import build, manifest_list, publish
from imdb_deploy.supply_chain import signing
from tests.images.conftest import ImageEngine

pytestmark = pytest.mark.images


def tiny_image(engine: ImageEngine, platform: str, tag: str) -> build.BuiltImage:
    """FROM scratch with one file naming its platform, built for `platform`."""
    dockerfile = b"FROM scratch\nCOPY platform.txt /platform.txt\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("platform.txt", platform.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.client.images.build(
        fileobj=context, custom_context=True, tag=tag, platform=platform, pull=False, rm=True
    )
    version = tag.rpartition(":")[2].removesuffix("-arm64")
    return build.BuiltImage("tiny", platform, str(image.id), [tag], version, {}, 0.0)


@pytest.fixture
def host_storage(tmp_path: Path) -> Iterator[list[str]]:
    """A throw-away image store, as a host's: vfs (no mounts left behind), a runroot short
    enough for Podman (50 characters at most)."""
    runroot = Path(tempfile.mkdtemp(prefix="mlops-host-"))
    try:
        yield [f"--root={tmp_path / 'storage'}", f"--runroot={runroot}", "--storage-driver=vfs"]
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


@dataclass(frozen=True)
class Host:
    """A host's engine: its own storage, and in its configuration the policy and registries.d
    that setup writes (signing.merged_policy / registries_d) for `image`."""

    registry: str
    storage: list[str]
    home: Path
    image: str
    key: Path
    lookaside: Path

    def podman(self, *argv: str) -> subprocess.CompletedProcess[str]:
        config = self.home / ".config" / "containers"
        (config / "registries.d").mkdir(parents=True, exist_ok=True)
        policy = signing.merged_policy("", self.image, PurePosixPath(self.key))
        (config / "policy.json").write_text(policy)
        lookaside = signing.registries_d(self.image, PurePosixPath(self.lookaside))
        (config / "registries.d" / "tiny.yaml").write_text(lookaside)
        with manifest_list.podman_cli_env(self.registry, os.environ) as env:
            env["HOME"] = str(self.home)
            return subprocess.run(
                [signing.podman(), *self.storage, *argv],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )


def test_a_release_of_two_platforms_is_one_signed_list(
    image_engine: ImageEngine, host_storage: list[str], tmp_path: Path
) -> None:
    repository = f"{image_engine.namespace}/mlops-imdb-tiny"
    images = [
        tiny_image(image_engine, "linux/amd64", f"{repository}:r1"),
        tiny_image(image_engine, "linux/arm64", f"{repository}:r1-arm64"),
    ]
    signer = signing.new_key(tmp_path / "gnupg", "tiny releases")
    evidence = {"sbom-image-tiny.cdx.json": b"{}"}
    try:
        done = publish.publish_service(image_engine.client, images, signer, evidence, os.environ)
    finally:
        signing.stop_agent(signer.gnupghome)  # no agent outlives the test

    digest = done["digest"]
    assert done["reference"] == f"{repository}:r1"
    platforms = manifest_list.platforms_of(f"{repository}:r1")
    assert platforms == {
        "linux/amd64": done["platform:linux/amd64"],
        "linux/arm64": done["platform:linux/arm64"],
    }
    assert done["signatures"] == signing.carrier_reference(repository, digest)
    assert done["signed_by"] == signer.fingerprint

    # The carrier holds a signature for the list, each platform and the evidence.
    lookaside = tmp_path / "lookaside"
    carrier = image_engine.client.images.get(done["signatures"])
    with io.BytesIO(b"".join(carrier.save())) as saved, tarfile.open(fileobj=saved) as outer:
        layers = [m for m in outer.getmembers() if m.name.endswith((".tar", "layer.tar"))]
        for member in layers:
            extracted = outer.extractfile(member)
            assert extracted is not None
            with tarfile.open(fileobj=io.BytesIO(extracted.read())) as layer:
                layer.extractall(lookaside, filter="data")
    tree = lookaside / signing.CARRIER_ROOT
    evidence_digest = done["evidence"].rpartition("@")[2]
    for signed in (digest, *platforms.values(), evidence_digest):
        assert (tree / signing.lookaside_entry(repository, signed) / "signature-1").is_file()

    # A host asks for the list by digest and gets its own platform, verified by its engine.
    key = tmp_path / "trusted.asc"
    key.write_text(signer.public_key())
    reference = f"{repository}@{digest}"
    host = Host(image_engine.registry, host_storage, tmp_path / "home", repository, key, tree)
    pulled = host.podman("pull", "--arch=arm64", reference)
    assert pulled.returncode == 0, pulled.stderr
    arch = host.podman("image", "inspect", "--format={{.Architecture}}", reference)
    assert arch.stdout.strip() == "arm64"

    # Without the amd64 image's signature, that platform is refused, the other still verifies.
    shutil.rmtree(tree / signing.lookaside_entry(repository, platforms["linux/amd64"]))
    refused = host.podman("pull", "--arch=amd64", reference)
    assert refused.returncode != 0
    assert "A signature was required, but no signature exists" in refused.stderr
