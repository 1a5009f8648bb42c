"""Build, tag, push, export, prune, scan and the CLI against an in-memory engine."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.engine import base_image, local
from imdb_deploy.images import (
    __main__ as cli,
)
from imdb_deploy.images import (
    artifact,
    build,
    context,
    engine_client,
    manifest_list,
    metadata,
    publish,
    retention,
    scan,
    services,
)
from imdb_deploy.images.platforms import PLATFORMS, Platform
from imdb_deploy.supply_chain import audit, signing
from tests.images.fakes import FakeClient, FakeImage, inventory_output

REVISION = metadata.Revision("f" * 40, 1700000000, dirty=False, tree="e" * 40)
MANIFEST = {"version": "20260101.000000-abc", "manifest_sha256": "d" * 64,
            "data": {"fingerprint": "c" * 64}, "metrics": {"rmse": 1.0}}  # fmt: skip
RELEASE = "20260101.000000-abc-teeeeeeeeeeee"


@pytest.fixture
def fake_context(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """`context.assemble` writes only a Dockerfile and records the artifact it was given."""
    seen: list[Path | None] = []

    def assemble(
        root: Path, service: services.ServiceImage, platform: Platform, directory: Path,
        *, cache_dir: Path, artifact: Path | None = None,
    ) -> context.BuildContext:  # fmt: skip
        directory.mkdir(parents=True)
        (directory / "Dockerfile").write_text("FROM scratch\n")
        if service.needs_artifact:
            (directory / "model").mkdir()
            (directory / "model" / "manifest.json").write_text(json.dumps(MANIFEST))
        seen.append(artifact)
        return context.BuildContext(
            path=directory, service=service, platform=platform, requirements_key="k",
            project_versions={service.distribution: "0.1.0", "imdb-model": "0.1.0"},
            model_version="20260101.000000-abc" if service.needs_artifact else None,
        )  # fmt: skip

    monkeypatch.setattr(context, "assemble", assemble)
    return seen


def test_build_service_tags_and_labels(fake_context: list[Path | None], tmp_path: Path) -> None:
    client = FakeClient()
    built = build.build_service(
        client, tmp_path, services.SERVICES["api"], PLATFORMS["linux/amd64"],  # type: ignore[arg-type]
        base_image="python:3.11-slim", revision=REVISION, cache_dir=tmp_path,
        registry="127.0.0.1:5000", artifact=tmp_path,
    )  # fmt: skip
    assert built.tags == [
        f"127.0.0.1:5000/mlops-imdb-api:{RELEASE}",
        "127.0.0.1:5000/mlops-imdb-api:ffffffffffff",
    ]
    assert client.images.get(built.image_id).tags == built.tags
    call = client.api.builds[0]
    assert call["pull"] is False
    assert call["use_config_proxy"] is False
    assert call["platform"] == "linux/amd64"
    assert call["buildargs"]["VERIFY_MODEL"] == "1"
    assert built.labels["io.mlops-imdb.model.version"] == "20260101.000000-abc"


def test_cross_build_verifies_the_model_natively(
    fake_context: list[Path | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[Path] = []
    monkeypatch.setattr(build, "verify_artifact", verified.append)
    client = FakeClient()
    built = build.build_service(
        client, tmp_path, services.SERVICES["api"], PLATFORMS["linux/arm64"],  # type: ignore[arg-type]
        base_image="b", revision=REVISION, cache_dir=tmp_path, artifact=tmp_path,
    )  # fmt: skip
    assert verified == [tmp_path]
    assert client.api.builds[0]["buildargs"]["VERIFY_MODEL"] == "0"
    assert built.tags[0] == f"localhost/mlops-imdb-api:{RELEASE}-arm64"


def test_trainer_version_is_project_and_commit(
    fake_context: list[Path | None], tmp_path: Path
) -> None:
    built = build.build_service(
        FakeClient(), tmp_path, services.SERVICES["trainer"], PLATFORMS["linux/amd64"],  # type: ignore[arg-type]
        base_image="b", revision=REVISION, cache_dir=tmp_path,
    )  # fmt: skip
    assert built.version == "0.1.0-gffffffffffff"


def test_push_and_export(tmp_path: Path) -> None:
    client = FakeClient()
    client.images.add(FakeImage("sha256:1", ["r/x:1", "r/x:abc"]))
    digests = build.push(client, ["r/x:1", "r/x:abc"])  # type: ignore[arg-type]
    assert set(digests.values()) == {"sha256:" + "d" * 64}
    assert client.images.auth == [None, None]  # anonymous unless credentials are given
    tarball = build.export(client, "r/x:1", tmp_path / "out")  # type: ignore[arg-type]
    assert tarball.name == "x_1.tar"
    assert tarball.read_bytes() == b"tar-of-r/x:1"
    client.images.push_error = "denied"
    with pytest.raises(build.BuildError, match="denied"):
        build.push(client, ["r/x:1"])  # type: ignore[arg-type]


def test_push_sends_registry_credentials_from_the_environment() -> None:
    assert build.registry_auth({}) is None
    assert build.registry_auth({build.REGISTRY_USER_VAR: "bot"}) is None
    auth = build.registry_auth(
        {build.REGISTRY_USER_VAR: "bot", build.REGISTRY_PASSWORD_VAR: "ghs_token"}
    )
    assert auth == {"username": "bot", "password": "ghs_token"}
    client = FakeClient()
    client.images.add(FakeImage("sha256:1", ["ghcr.io/o/x:1"]))
    build.push(client, ["ghcr.io/o/x:1"], auth)  # type: ignore[arg-type]
    assert client.images.auth == [auth]


def test_prune_local_untags_whole_releases() -> None:
    client = FakeClient()
    for day in range(1, 5):
        labels = {retention.VERSION_LABEL: f"v{day}", retention.CREATED_LABEL: f"2026-01-0{day}"}
        client.images.add(FakeImage(f"sha256:{day}", [f"r/x:v{day}", f"r/x:s{day}"], labels))
    client.images.add(FakeImage("sha256:other", ["r/x:foreign"], {}))
    dry = retention.prune_local(client, "r/x", keep=1, protected={"s1"}, dry_run=True)  # type: ignore[arg-type]
    assert [r.version for r in dry] == ["v3", "v2"]
    assert client.images.removed == []
    retention.prune_local(client, "r/x", keep=1, protected={"s1"})  # type: ignore[arg-type]
    assert sorted(client.images.removed) == ["r/x:s2", "r/x:s3", "r/x:v2", "r/x:v3"]
    assert "sha256:other" in client.images.store


class DictRegistry(retention.RegistryClient):
    """RegistryClient whose HTTP layer answers from a dict of path -> (status, headers, body)."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__("127.0.0.1:5000")
        object.__setattr__(self, "routes", routes)

    def _request(
        self, method: str, path: str, headers: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = self.routes  # type: ignore[attr-defined]
        return routes.get((method, path), (404, {}, b"{}"))


def test_registry_client_reads_manifests_indexes_and_configs() -> None:
    config = {"config": {"Labels": {retention.VERSION_LABEL: "v1", retention.CREATED_LABEL: "t"}}}
    manifest = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": "sha256:c"}}  # fmt: skip
    index = {"mediaType": retention.INDEX_TYPES[0], "manifests": [{"digest": "sha256:m"}]}
    routes = {
        ("GET", "/v2/x/tags/list"): (200, {}, json.dumps({"tags": ["v1", "multi"]}).encode()),
        ("GET", "/v2/x/manifests/v1"): (200, {"docker-content-digest": "sha256:m"},
                                        json.dumps(manifest).encode()),
        ("GET", "/v2/x/manifests/multi"): (200, {"docker-content-digest": "sha256:i"},
                                           json.dumps(index).encode()),
        ("GET", "/v2/x/manifests/sha256:m"): (200, {"docker-content-digest": "sha256:m"},
                                              json.dumps(manifest).encode()),
        ("GET", "/v2/x/blobs/sha256:c"): (200, {}, json.dumps(config).encode()),
        ("DELETE", "/v2/x/manifests/sha256:m"): (202, {}, b""),
        ("DELETE", "/v2/x/manifests/sha256:i"): (500, {}, b""),
    }  # fmt: skip
    client = DictRegistry(routes)
    releases = retention.registry_releases(client, "x")
    assert len(releases) == 1
    assert releases[0].images == {"sha256:m", "sha256:i"}
    assert releases[0].tags == {"v1", "multi"}
    assert client.tags("missing") == []
    client.delete("x", "sha256:m")
    with pytest.raises(retention.RetentionError, match="HTTP 500"):
        client.delete("x", "sha256:i")
    with pytest.raises(retention.RetentionError, match="HTTP 404"):
        client.manifest("x", "nope")
    assert client.labels("x", {"mediaType": retention.INDEX_TYPES[0], "manifests": []}) == {}


def test_registry_client_against_a_closed_port() -> None:
    with pytest.raises(retention.RetentionError):
        retention.RegistryClient("127.0.0.1:9", timeout=1).tags("x")


def test_scan_image_writes_sbom_and_audits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient()
    client.images.add(FakeImage("sha256:" + "1" * 64, ["r/mlops-imdb-api:1"]))
    client.containers.output = inventory_output()
    audited: list[str] = []

    def fake_audit(requirements: Path, report: Path, osv_dir: Path | None) -> int:
        audited.append(requirements.read_text())
        report.write_text("{}")
        return 1

    monkeypatch.setattr(audit, "audit", fake_audit)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = scan.scan_image(
        client, "r/mlops-imdb-api:1", name="api", version="1", platform="linux/amd64",  # type: ignore[arg-type]
        reports=tmp_path,
    )  # fmt: skip
    assert result.sbom == tmp_path / "sbom-image-api.cdx.json"
    assert json.loads(result.sbom.read_text())["metadata"]["component"]["name"] == "mlops-imdb-api"
    assert audited == [f"numpy==2.4.6 --hash=sha256:{'a' * 64}\n"]
    assert result.failures
    assert "pip-audit" in result.failures[0]
    run = client.containers.runs[0]
    assert run["read_only"] is True
    assert run["network_mode"] == "none"


def test_unreadable_inventory(tmp_path: Path) -> None:
    client = FakeClient()
    client.containers.output = b"not json"
    with pytest.raises(scan.ScanError):
        scan.inventory(client, "x")  # type: ignore[arg-type]


def test_engine_client_reads_engine_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local.STATE_DIR_VAR, str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert engine_client.engine_info() == {}
    with pytest.raises(engine_client.EngineNotFoundError):
        engine_client.connect()
    (tmp_path / "engine.json").write_text(
        json.dumps({"docker_host": "unix:///nonexistent.sock", "managed": True})
    )
    with pytest.raises(engine_client.EngineNotFoundError, match="nonexistent"):
        engine_client.connect()
    assert engine_client.base_source(FakeClient()) == "debootstrap"  # type: ignore[arg-type]
    (tmp_path / "engine.json").write_text("[]")
    assert engine_client.base_source(FakeClient("Docker Engine")) == "pull"  # type: ignore[arg-type]


def test_platform_base_is_found_or_pulled(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient()
    arm64 = PLATFORMS["linux/arm64"]
    client.images.add(FakeImage("sha256:b", ["localhost/python:3.11-slim-arm64"]))
    assert engine_client.ensure_platform_base(client, arm64, "debootstrap").endswith("-arm64")  # type: ignore[arg-type]
    calls: list[str] = []

    def ensure(client: object, source: str, cache_dir: Path | None) -> str:
        calls.append(source)
        return "sha256:x"

    monkeypatch.setattr(base_image, "ensure_base_image", ensure)
    assert (
        engine_client.ensure_platform_base(
            client, PLATFORMS["linux/amd64"], "pull"  # type: ignore[arg-type]
        )
        == "docker.io/library/python:3.11-slim"
    )
    assert calls == ["pull"]


def test_trainer_failure_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "imdb-trainer"
    script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(artifact.ArtifactError, match="broken"):
        artifact.verify_artifact(tmp_path)


def run_cli(
    argv: Sequence[str], monkeypatch: pytest.MonkeyPatch, client: FakeClient, cache: Path
) -> int:
    """The images CLI against a fake engine, with its cache (wheels, contexts) under `cache`:
    a test never writes into the user's own ~/.cache."""
    monkeypatch.setattr(engine_client, "connect", lambda *a, **k: client)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # `make pipeline` exports MLOPS_PLATFORMS for its images stage: the default here is amd64.
    monkeypatch.delenv("MLOPS_PLATFORMS", raising=False)
    return cli.main(list(argv))


def test_cli_build_push_export_summary_and_release(
    fake_context: list[Path | None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient()
    monkeypatch.setattr(engine_client, "ensure_platform_base", lambda *a: "base")
    monkeypatch.setattr(metadata, "git_revision", lambda root: REVISION)
    # The list and the signatures are made by Podman's CLI from the registry: stand-ins here
    # (tests/images/test_images_manifest_list.py and the sandbox deploy tests run the real ones).
    lists: list[tuple[list[str], list[str]]] = []
    signed: list[tuple[str, list[str]]] = []
    list_digest = "sha256:" + "e" * 64

    def publish_list(instances: list[str], tags: list[str], environ: object) -> str:
        lists.append((instances, tags))
        return list_digest

    def attach(client: object, signer: object, repository: str, release: str,
               digests: list[str], **kwargs: object) -> str:  # fmt: skip
        signed.append((repository, digests))
        return signing.carrier_reference(repository, release)

    @contextlib.contextmanager
    def signer(environ: object, registry: str) -> Iterator[signing.Signer]:
        yield signing.Signer(tmp_path / "gnupg", "F" * 40)

    monkeypatch.setattr(manifest_list, "publish", publish_list)
    monkeypatch.setattr(publish, "attach_signatures", attach)
    monkeypatch.setattr(signing, "release_signer", signer)
    # A report an earlier build left behind is no evidence of this one (no --scan here).
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "sbom-image-api.cdx.json").write_text("{}")
    github_output = tmp_path / "github-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))
    argv = ["build", "--registry=127.0.0.1:5000", "--push", f"--export={tmp_path / 'tars'}",
            f"--reports={tmp_path / 'reports'}", f"--artifact={tmp_path / 'model'}"]  # fmt: skip
    assert run_cli(argv, monkeypatch, client, tmp_path / "cache") == 0
    out = capsys.readouterr().out
    assert fake_context == [tmp_path / "model", tmp_path / "model"]
    summary = json.loads((tmp_path / "reports" / "images-amd64.json").read_text())
    assert [entry["service"] for entry in summary] == ["api", "trainer"]
    assert all(entry["pushed"] for entry in summary)
    assert summary[0]["release"]["release"] == RELEASE
    assert sorted(p.name for p in (tmp_path / "tars").iterdir()) == [
        f"mlops-imdb-api_{RELEASE}.tar",
        "mlops-imdb-trainer_0.1.0-gffffffffffff.tar",
    ]
    # The release record: the code tree, the model, and the digest of every image pushed.
    record = json.loads((tmp_path / "reports" / "release.json").read_text())
    assert record["release"] == RELEASE
    assert (record["commit"], record["tree"], record["dirty"]) == ("f" * 40, "e" * 40, False)
    assert record["model"] == {"version": MANIFEST["version"], "manifest_sha256": "d" * 64,
                               "data_fingerprint": "c" * 64, "metrics": {"rmse": 1.0}}  # fmt: skip
    # Each service: its amd64 image pushed by digest, one list of it under the release's tags,
    # signed (the list and its platforms), the signatures published beside it.
    assert {k: v["digest"] for k, v in record["images"].items()} == {
        "api": list_digest, "trainer": list_digest
    }  # fmt: skip
    api = record["images"]["api"]
    assert api["platform:linux/amd64"] == "sha256:" + "d" * 64
    assert api["signed_by"] == "F" * 40
    assert "evidence" not in api
    assert api["signatures"] == f"127.0.0.1:5000/mlops-imdb-api-signatures:sha256-{'e' * 64}"
    assert f"127.0.0.1:5000/mlops-imdb-api:{RELEASE}-amd64" in client.images.pushed
    assert lists[0] == (
        [f"127.0.0.1:5000/mlops-imdb-api@sha256:{'d' * 64}"],
        [f"127.0.0.1:5000/mlops-imdb-api:{RELEASE}", "127.0.0.1:5000/mlops-imdb-api:ffffffffffff"],
    )
    assert signed[0] == ("127.0.0.1:5000/mlops-imdb-api", [list_digest])
    # In GitHub Actions: what the CD workflow attests.
    assert github_output.read_text() == (
        f"api-image=127.0.0.1:5000/mlops-imdb-api\napi-digest={list_digest}\n"
    )
    # ... pushed beside the images, as an image of its own that holds it.
    reference = f"127.0.0.1:5000/mlops-imdb-release:{RELEASE}"
    assert reference in client.images.pushed
    assert json.loads(client.images.contexts[reference]["release.json"]) == record
    assert f"release {RELEASE}: record" in out
    # The API image carries the identity (no digests: an image cannot name its own).
    api_build = client.api.builds[0]
    assert api_build["buildargs"]["VERSION"] == RELEASE
    assert client.closed


def test_cli_build_refuses_an_api_image_without_a_trained_model(
    fake_context: list[Path | None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MLOPS_ARTIFACT", raising=False)
    client = FakeClient()
    monkeypatch.setattr(engine_client, "ensure_platform_base", lambda *a: "base")
    monkeypatch.setattr(metadata, "git_revision", lambda root: REVISION)
    argv = ["build", "--registry=127.0.0.1:5000", f"--reports={tmp_path}"]
    assert run_cli(argv, monkeypatch, client, tmp_path / "cache") == 2
    assert "no model artifact for the API image" in capsys.readouterr().err
    assert fake_context == []  # nothing was built
    assert not client.api.builds
    # The trainer image alone ships no model and needs none.
    assert run_cli([*argv, "--service=trainer"], monkeypatch, client, tmp_path / "cache") == 0


def test_cli_platforms_come_from_mlops_platforms_and_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOPS_PLATFORMS", "linux/amd64,linux/arm64")
    args = cli.parser().parse_args(["build"])
    assert [p.docker for p in cli.parse_platforms(args.platform)] == ["linux/amd64", "linux/arm64"]
    assert [p.docker for p in cli.parse_platforms("linux/arm64/v8,linux/arm64")] == ["linux/arm64"]
    with pytest.raises(ValueError, match="unsupported platform"):
        cli.parse_platforms("linux/amd64,windows/amd64")


def test_cli_build_scan_failure_fails(
    fake_context: list[Path | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_client, "ensure_platform_base", lambda *a: "base")
    monkeypatch.setattr(metadata, "git_revision", lambda root: REVISION)
    failed = scan.ScanResult(
        name="mlops-imdb-trainer", reference="r/x:1", platform="linux/amd64",
        sbom=tmp_path / "sbom", audit_report=tmp_path / "audit", trivy_report=None,
        trivy_installed=False, os_packages_scanned=False, reason="", failures=["finding"],
    )  # fmt: skip
    monkeypatch.setattr(scan, "scan_all", lambda *a: [failed])
    argv = ["build", "--service=trainer", "--scan", f"--reports={tmp_path}"]
    assert run_cli(argv, monkeypatch, FakeClient(), tmp_path / "cache") == 1


def test_cli_prune_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client = FakeClient()
    argv = ["prune", "--registry=127.0.0.1:5000", "--local-only", "--keep=1", "--dry-run"]
    assert run_cli(argv, monkeypatch, client, tmp_path / "cache") == 0
    assert "would remove nothing" in capsys.readouterr().out
    monkeypatch.setattr(retention, "prune_registry", lambda *a: [])
    assert (
        run_cli(["prune", "--service=api", "--protect=v1"], monkeypatch, client, tmp_path / "cache")
        == 0
    )
    assert "(registry): removed nothing" in capsys.readouterr().out
    assert (
        run_cli(["build", "--platform=linux/s390x"], monkeypatch, client, tmp_path / "cache") == 2
    )
    assert "unsupported platform" in capsys.readouterr().err
