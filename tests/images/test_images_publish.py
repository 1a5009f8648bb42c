"""Publishing a release, the pure parts: the Podman CLI's environment (plain HTTP for loopback
registries only, credentials in a mode-600 file that goes away), the manifest list's commands and
digests with Podman stood in for, the registry tags of a release, and the platform parity check's
comparison and its record of passes. tests/images/test_images_manifest_list.py and the sandbox
deploy tests run the real Podman."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import docker
import pytest

from imdb_deploy.images import build, manifest_list, parity, publish
from imdb_deploy.images.build import BuildError
from tests.images.fakes import FakeClient

REPOSITORY = "127.0.0.1:5000/tests/images/mlops-imdb-api"
VERSION = "20261203.101500-22a474db-t0123456789ab"
SHA_TAG = "a" * 12
LIST_DIGEST = "sha256:" + "e" * 64
INSTANCES = [f"{REPOSITORY}@sha256:{'1' * 64}", f"{REPOSITORY}@sha256:{'2' * 64}"]
TAGS = [f"{REPOSITORY}:{VERSION}", f"{REPOSITORY}:{SHA_TAG}"]


def built(
    platform: str, suffix: str = "", image_id: str = "sha256:" + "9" * 64
) -> build.BuiltImage:
    return build.BuiltImage(
        service="api",
        platform=platform,
        image_id=image_id,
        tags=[f"{REPOSITORY}:{VERSION}{suffix}", f"{REPOSITORY}:{SHA_TAG}{suffix}"],
        version=VERSION,
        labels={},
        seconds=1.0,
    )


# ---- registries ------------------------------------------------------------------------------


def test_registry_of_a_reference() -> None:
    assert manifest_list.registry_of(f"{REPOSITORY}:{VERSION}") == "127.0.0.1:5000"
    assert manifest_list.registry_of("ghcr.io/acme/mlops-imdb-api@sha256:1") == "ghcr.io"


# ---- the Podman CLI's environment --------------------------------------------------------------


def test_a_loopback_registry_is_the_only_insecure_one() -> None:
    with manifest_list.podman_cli_env("127.0.0.1:5000", {"HOME": "/home/u"}) as env:
        conf = Path(env["CONTAINERS_REGISTRIES_CONF"]).read_text()
        assert env["HOME"] == "/home/u"
        assert "REGISTRY_AUTH_FILE" not in env  # no credentials: none written
    assert 'location = "127.0.0.1:5000"\ninsecure = true' in conf
    with manifest_list.podman_cli_env("ghcr.io", {}) as env:
        conf = Path(env["CONTAINERS_REGISTRIES_CONF"]).read_text()
    assert "insecure" not in conf
    assert "ghcr.io" not in conf


def test_credentials_go_to_a_private_auth_file_that_is_gone_afterwards() -> None:
    password = "ghp_secret-token-value"
    environ = {build.REGISTRY_USER_VAR: "ci-bot", build.REGISTRY_PASSWORD_VAR: password}
    with manifest_list.podman_cli_env("ghcr.io", environ) as env:
        auth = Path(env["REGISTRY_AUTH_FILE"])
        conf = Path(env["CONTAINERS_REGISTRIES_CONF"])
        assert stat.S_IMODE(auth.stat().st_mode) == 0o600
        token = json.loads(auth.read_text())["auths"]["ghcr.io"]["auth"]
        assert base64.b64decode(token).decode() == f"ci-bot:{password}"
        # The caller's own variables pass through; the new ones never hold the password.
        assert env[build.REGISTRY_PASSWORD_VAR] == password
        added = {k: v for k, v in env.items() if k not in environ}
        assert not [k for k, v in added.items() if password in v]
        directory = auth.parent
        assert conf.parent == directory
    assert not directory.exists()


@pytest.mark.parametrize(
    "environ",
    [{build.REGISTRY_USER_VAR: "ci-bot"}, {build.REGISTRY_PASSWORD_VAR: "p"},
     {build.REGISTRY_USER_VAR: "", build.REGISTRY_PASSWORD_VAR: "p"}],
)  # fmt: skip
def test_half_the_credentials_are_none(environ: dict[str, str]) -> None:
    with manifest_list.podman_cli_env("ghcr.io", environ) as env:
        assert "REGISTRY_AUTH_FILE" not in env


def test_the_temporary_directory_goes_when_the_caller_fails() -> None:
    seen: list[Path] = []

    def fail_inside() -> None:
        with manifest_list.podman_cli_env("127.0.0.1:5000", {}) as env:
            seen.append(Path(env["CONTAINERS_REGISTRIES_CONF"]).parent)
            raise BuildError("inside")

    with pytest.raises(BuildError, match="inside"):
        fail_inside()
    assert seen
    assert not seen[0].exists()


# ---- the manifest list -------------------------------------------------------------------------


def test_the_list_is_assembled_from_pushed_manifests_by_digest() -> None:
    assert manifest_list.assemble_argv("l", INSTANCES) == [
        ["manifest", "create", "l"],
        ["manifest", "add", "l", f"docker://{INSTANCES[0]}"],
        ["manifest", "add", "l", f"docker://{INSTANCES[1]}"],
    ]
    assert manifest_list.push_argv("l", TAGS[0], Path("/tmp/d/digest")) == [
        "manifest", "push", "--all", "--digestfile", "/tmp/d/digest", "l", f"docker://{TAGS[0]}",
    ]  # fmt: skip


class FakePodman:
    """Stands in for `manifest_list._podman` and the `manifest rm` that `publish` runs."""

    def __init__(self, digests: Sequence[str] = (LIST_DIGEST,), fail_push: int = -1) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[dict[str, str]] = []
        self.removed: list[list[str]] = []
        self.digests = list(digests)
        self.fail_push = fail_push
        self.pushes = 0

    def podman(self, argv: Sequence[str], env: Mapping[str, str]) -> str:
        self.calls.append(list(argv))
        self.envs.append(dict(env))
        if list(argv[:2]) == ["manifest", "push"]:
            if self.pushes == self.fail_push:
                raise BuildError(f"`podman {' '.join(argv[:2])}` failed (125): denied")
            digest_file = Path(argv[argv.index("--digestfile") + 1])
            digest_file.write_text(self.digests[self.pushes % len(self.digests)] + "\n")
            self.pushes += 1
        return ""

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.removed.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, b"", b"")


@pytest.fixture
def fake_podman(monkeypatch: pytest.MonkeyPatch) -> FakePodman:
    fake = FakePodman()
    monkeypatch.setattr(manifest_list, "podman", lambda: "podman")
    monkeypatch.setattr(manifest_list, "_podman", fake.podman)
    monkeypatch.setattr(subprocess, "run", fake.run)  # the `manifest rm`
    return fake


def test_publish_pushes_one_list_under_every_tag(fake_podman: FakePodman) -> None:
    assert manifest_list.publish(INSTANCES, TAGS, {"HOME": "/home/u"}) == LIST_DIGEST
    name = fake_podman.calls[0][2]
    assert name.startswith("mlops-imdb-list-")
    assert fake_podman.calls[:3] == manifest_list.assemble_argv(name, INSTANCES)
    pushes = [argv for argv in fake_podman.calls if argv[:2] == ["manifest", "push"]]
    assert [argv[-1] for argv in pushes] == [f"docker://{tag}" for tag in TAGS]
    assert all(argv[-2] == name for argv in pushes)
    assert len(fake_podman.calls) == 3 + len(TAGS)
    # Each push in the loopback registry's environment; the local list removed at the end.
    assert all("CONTAINERS_REGISTRIES_CONF" in env for env in fake_podman.envs)
    assert fake_podman.removed == [["podman", "manifest", "rm", name]]


def test_the_local_list_is_removed_when_a_push_fails(fake_podman: FakePodman) -> None:
    fake_podman.fail_push = 1
    with pytest.raises(BuildError, match="denied"):
        manifest_list.publish(INSTANCES, TAGS, {})
    assert len(fake_podman.removed) == 1
    assert fake_podman.removed[0][1:3] == ["manifest", "rm"]


def test_tags_that_got_different_digests_are_refused(fake_podman: FakePodman) -> None:
    fake_podman.digests = [LIST_DIGEST, "sha256:" + "f" * 64]
    with pytest.raises(BuildError, match="different digests"):
        manifest_list.publish(INSTANCES, TAGS, {})
    assert len(fake_podman.removed) == 1


@pytest.mark.parametrize(("instances", "tags"), [([], TAGS), (INSTANCES, [])])
def test_a_list_needs_images_and_tags(
    fake_podman: FakePodman, instances: list[str], tags: list[str]
) -> None:
    with pytest.raises(BuildError, match="at least one image and one tag"):
        manifest_list.publish(instances, tags, {})
    assert fake_podman.calls == []
    assert fake_podman.removed == []


def test_platforms_of_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": INSTANCES[0].partition("@")[2],
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": INSTANCES[1].partition("@")[2],
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }  # fmt: skip
    asked: list[list[str]] = []

    def inspect(argv: Sequence[str], env: Mapping[str, str]) -> str:
        asked.append(list(argv))
        return json.dumps(index)

    monkeypatch.setattr(manifest_list, "_podman", inspect)
    reference = f"{REPOSITORY}@{LIST_DIGEST}"
    assert manifest_list.platforms_of(reference, {}) == {
        "linux/amd64": f"sha256:{'1' * 64}",
        "linux/arm64": f"sha256:{'2' * 64}",
    }
    assert asked == [["manifest", "inspect", reference]]


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"schemaVersion": 2, "config": {}, "layers": []}),  # one image, not a list
        json.dumps({"manifests": {"digest": "sha256:1"}}),
        json.dumps({"manifests": [{"digest": "sha256:1"}]}),
        json.dumps([]),
        "not json",
    ],
)
def test_what_is_not_a_list_is_refused(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setattr(manifest_list, "_podman", lambda argv, env: answer)
    with pytest.raises(BuildError, match="is not a manifest list"):
        manifest_list.platforms_of(f"{REPOSITORY}:{VERSION}", {})


# ---- a release's tags --------------------------------------------------------------------------


def test_tags_of_an_amd64_image() -> None:
    amd64 = built("linux/amd64")
    assert publish.platform_tag(amd64) == f"{REPOSITORY}:{VERSION}-amd64"
    assert publish.list_tags(amd64) == TAGS


def test_tags_of_an_arm64_image() -> None:
    arm64 = built("linux/arm64", "-arm64")
    assert publish.platform_tag(arm64) == f"{REPOSITORY}:{VERSION}-arm64"
    assert publish.list_tags(arm64) == TAGS


def test_the_evidence_is_tagged_by_the_lists_digest() -> None:
    assert publish.evidence_tag(REPOSITORY, LIST_DIGEST) == (
        f"{REPOSITORY}:sha256-{'e' * 64}.evidence"
    )


def test_evidence_files_are_the_reports_that_exist(tmp_path: Path) -> None:
    (tmp_path / "sbom.json").write_bytes(b'{"bomFormat": "CycloneDX"}')
    (tmp_path / "trivy.json").write_bytes(b"{}")
    (tmp_path / "a-directory.json").mkdir()
    paths = [tmp_path / name for name in ("sbom.json", "missing.json", "a-directory.json")]
    assert publish.evidence_files([*paths, tmp_path / "trivy.json"]) == {
        "sbom.json": b'{"bomFormat": "CycloneDX"}',
        "trivy.json": b"{}",
    }
    assert publish.evidence_files([]) == {}


# ---- platform parity ---------------------------------------------------------------------------

GOLDEN: list[dict[str, Any]] = [
    {"input": {"title": "A"}, "expected": 7.25},
    {"input": {"title": "B"}, "expected": 5.0},
    {"input": {"title": "C"}, "expected": 8.125},
]


def test_answers_within_the_tolerance_match() -> None:
    close = [7.25 + parity.TOLERANCE / 2, 5.0, 8.125 - parity.TOLERANCE / 2]
    assert parity.mismatches(GOLDEN, close) == []


def test_one_answer_off_is_named() -> None:
    problems = parity.mismatches(GOLDEN, [7.25, 5.0 + parity.TOLERANCE * 3, 8.125])
    assert len(problems) == 1
    assert problems[0].startswith("golden example 1: ")
    assert "the model says 5.0" in problems[0]


def test_a_different_number_of_answers_is_one_mismatch() -> None:
    assert parity.mismatches(GOLDEN, [7.25, 5.0]) == ["2 answers to 3 golden examples"]


def no_engine() -> docker.DockerClient:
    """A client the parity check never uses: `answers` (what runs the images) is stood in for."""
    return cast("docker.DockerClient", FakeClient())


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps({"version": "v", "golden": GOLDEN}))
    return directory


def test_passes_are_recorded_and_reused(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    amd64 = built("linux/amd64", image_id="sha256:" + "a" * 64)
    arm64 = built("linux/arm64", "-arm64", image_id="sha256:" + "b" * 64)
    reports.mkdir()
    earlier = {amd64.image_id: {"platform": "linux/amd64", "seconds": 2.0}}
    (reports / parity.RECORD).write_text(json.dumps(earlier))
    asked: list[tuple[str, list[Any]]] = []

    def golden_answers(client: object, image: build.BuiltImage, movies: list[Any]) -> list[float]:
        asked.append((image.image_id, movies))
        return [float(example["expected"]) for example in GOLDEN]

    monkeypatch.setattr(parity, "answers", golden_answers)
    parity.check_release(no_engine(), [amd64, arm64], artifact, reports)
    assert asked == [(arm64.image_id, [example["input"] for example in GOLDEN])]
    record = json.loads((reports / parity.RECORD).read_text())
    assert record[amd64.image_id] == earlier[amd64.image_id]
    assert record[arm64.image_id]["platform"] == "linux/arm64"

    def never(client: object, image: build.BuiltImage, movies: list[Any]) -> list[float]:
        raise AssertionError(f"{image.platform} was run again")

    monkeypatch.setattr(parity, "answers", never)
    parity.check_release(no_engine(), [amd64, arm64], artifact, reports)


def test_the_first_check_writes_the_record(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "new" / "reports"  # made by the check
    amd64 = built("linux/amd64")
    monkeypatch.setattr(parity, "answers", lambda client, image, movies: [7.25, 5.0, 8.125])
    parity.check_release(no_engine(), [amd64], artifact, reports)
    assert list(json.loads((reports / parity.RECORD).read_text())) == [amd64.image_id]


def test_a_platform_that_answers_differently_fails_the_release(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    (tmp_path / "reports").mkdir()
    (reports / parity.RECORD).write_text("not json")  # an unreadable record: checked anew
    arm64 = built("linux/arm64", "-arm64", image_id="sha256:" + "b" * 64)
    monkeypatch.setattr(parity, "answers", lambda client, image, movies: [7.25, 5.5, 8.125])
    with pytest.raises(parity.ParityError, match=r"^linux/arm64 API image: golden example 1"):
        parity.check_release(no_engine(), [arm64], artifact, reports)
    assert (reports / parity.RECORD).read_text() == "not json"  # no pass recorded
