"""Build context assembly: only the listed inputs, in the layout the Dockerfiles expect."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from imdb_deploy.images import context, debs, requirements
from imdb_deploy.images.platforms import PLATFORMS, Platform
from imdb_deploy.images.services import SERVICES, ServiceImage, select

AMD64 = PLATFORMS["linux/amd64"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Replace uv, pip and apt with fakes; returns the fake wheel cache directory."""
    cache = tmp_path / "cache" / "wheels" / "amd64" / "key123"
    cache.mkdir(parents=True)
    (cache / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"numpy")

    def export(root: Path, distribution: str, output: Path) -> Path:
        output.write_text(f"# {distribution}\nnumpy==2.4.6 --hash=sha256:{'a' * 64}\n")
        return output

    def wheels(root: Path, names: Sequence[str], out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        built = []
        for name in names:
            wheel = out_dir / f"{name.replace('-', '_')}-0.1.0-py3-none-any.whl"
            wheel.write_bytes(name.encode())
            built.append(wheel)
        return built

    def fake_debs(packages: Sequence[str], platform: Platform, cache_dir: Path) -> list[Path]:
        out = []
        for package in packages:
            deb = cache_dir / f"{package}_1.0_{platform.debian_arch}.deb"
            deb.write_bytes(b"deb")
            out.append(deb)
        return out

    monkeypatch.setattr(requirements, "export_requirements", export)
    monkeypatch.setattr(requirements, "cached_wheels", lambda *args: cache)
    monkeypatch.setattr(requirements, "build_project_wheels", wheels)
    monkeypatch.setattr(debs, "download_debs", fake_debs)
    return cache


def make_artifact(directory: Path, version: str = "20260101.000000-abcdef12") -> Path:
    directory.mkdir()
    (directory / "manifest.json").write_text(json.dumps({"version": version}))
    (directory / "model.onnx").write_bytes(b"onnx")
    (directory / "report").mkdir()
    (directory / "report" / "metrics.json").write_text("{}")
    return directory


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_api_context(offline: Path, repo_root: Path, tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifact")
    ctx = context.assemble(
        repo_root, SERVICES["api"], AMD64, tmp_path / "ctx", cache_dir=tmp_path, artifact=art
    )
    assert listing(ctx.path) == [
        "Dockerfile",
        "debs",
        "model",
        "model/manifest.json",
        "model/model.onnx",
        "model/report",
        "model/report/metrics.json",
        "project",
        "project/imdb_api-0.1.0-py3-none-any.whl",
        "project/imdb_model-0.1.0-py3-none-any.whl",
        "project/requirements.txt",
        "requirements.txt",
        "wheels",
        "wheels/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]
    assert ctx.model_version == "20260101.000000-abcdef12"
    assert ctx.project_versions == {"imdb-model": "0.1.0", "imdb-api": "0.1.0"}
    assert ctx.requirements_key == "key123"
    pins = (ctx.path / "project" / "requirements.txt").read_text().splitlines()
    assert [line.split(" ")[0] for line in pins] == ["imdb-api==0.1.0", "imdb-model==0.1.0"]
    dockerfile = (repo_root / "services" / "api" / "Dockerfile").read_text()
    assert (ctx.path / "Dockerfile").read_text() == dockerfile


def test_trainer_context_has_its_debs_and_no_model(
    offline: Path, repo_root: Path, tmp_path: Path
) -> None:
    ctx = context.assemble(repo_root, SERVICES["trainer"], AMD64, tmp_path / "ctx",
                           cache_dir=tmp_path)  # fmt: skip
    assert listing(ctx.path / "debs") == ["libgomp1_1.0_amd64.deb"]
    assert listing(ctx.path / "model") == []
    assert ctx.model_version is None


def test_api_needs_an_artifact(offline: Path, repo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(context.ContextError, match="needs a model artifact"):
        context.assemble(repo_root, SERVICES["api"], AMD64, tmp_path / "c", cache_dir=tmp_path)


def test_context_directory_must_be_empty(offline: Path, repo_root: Path, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "stray.env").write_text("TOKEN=x")
    with pytest.raises(context.ContextError, match="not empty"):
        context.assemble(repo_root, SERVICES["trainer"], AMD64, tmp_path / "c", cache_dir=tmp_path)


def test_artifact_with_symlink_is_refused(tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "artifact")
    (art / "link").symlink_to("/etc/passwd")
    (tmp_path / "out").mkdir()
    with pytest.raises(context.ContextError, match="symlink"):
        context.copy_artifact(art, tmp_path / "out")


@pytest.mark.parametrize("manifest", ["not json", "[]", '{"version": ""}'])
def test_artifact_version_needs_a_manifest(tmp_path: Path, manifest: str) -> None:
    (tmp_path / "manifest.json").write_text(manifest)
    with pytest.raises(context.ContextError):
        context.artifact_version(tmp_path)


def test_service_selection() -> None:
    assert [s.name for s in select("all")] == ["api", "trainer"]
    assert select("trainer")[0].repository == "mlops-imdb-trainer"
    with pytest.raises(ValueError, match="unknown service"):
        select("db")
    assert isinstance(SERVICES["api"], ServiceImage)
