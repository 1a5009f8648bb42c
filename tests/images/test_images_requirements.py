"""Requirement and wheel plumbing: export, download arguments, the wheel cache, project pins."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from imdb_deploy.images import requirements
from imdb_deploy.images.platforms import PLATFORMS

AMD64 = PLATFORMS["linux/amd64"]
ARM64 = PLATFORMS["linux/arm64"]
PINS = "numpy==2.4.6 ; python_full_version == '3.11.*' \\\n    --hash=sha256:" + "a" * 64 + "\n"


def test_export_argv_is_locked_and_hashed(tmp_path: Path) -> None:
    argv = requirements.export_argv("imdb-api", tmp_path / "r.txt")
    for flag in ("--locked", "--package=imdb-api", "--no-dev", "--no-emit-workspace",
                 "--no-header", "--format=requirements-txt"):  # fmt: skip
        assert flag in argv


def test_export_requirements_from_the_lock(repo_root: Path, tmp_path: Path) -> None:
    out = requirements.export_requirements(repo_root, "imdb-api", tmp_path / "req.txt")
    text = out.read_text()
    assert "--hash=sha256:" in text
    names = requirements.pinned_names(text)
    assert {"fastapi", "numpy", "onnxruntime"} <= names
    assert not any(name.startswith("imdb-") for name in names)


def test_download_argv_targets_the_platform(tmp_path: Path) -> None:
    argv = requirements.download_argv(tmp_path / "r.txt", tmp_path / "w", ARM64)
    assert "--only-binary=:all:" in argv
    assert "--require-hashes" in argv
    assert "--python-version=3.11" in argv
    assert "--platform=manylinux2014_aarch64" in argv
    assert "--platform=any" in argv
    assert not any("x86_64" in arg for arg in argv)


def test_cache_key_depends_on_pins_and_platform() -> None:
    key = requirements.wheel_cache_key(PINS, AMD64)
    assert key == requirements.wheel_cache_key(PINS, AMD64)
    assert key != requirements.wheel_cache_key(PINS, ARM64)
    assert key != requirements.wheel_cache_key(PINS.replace("2.4.6", "2.4.7"), AMD64)


def test_warm_cache_downloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pins = tmp_path / "requirements.txt"
    pins.write_text(PINS)
    calls: list[Sequence[str]] = []

    def fake_run(argv: Sequence[str], cwd: Path | None = None) -> str:
        calls.append(argv)
        dest = Path(next(a for a in argv if a.startswith("--dest=")).split("=", 1)[1])
        (dest / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
        return ""

    monkeypatch.setattr(requirements, "_run", fake_run)
    first = requirements.cached_wheels(pins, AMD64, tmp_path / "cache")
    second = requirements.cached_wheels(pins, AMD64, tmp_path / "cache")
    assert first == second
    assert len(calls) == 1
    assert (first / requirements.COMPLETE_MARKER).is_file()
    assert [p.name for p in first.glob("*.whl")] == [
        "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"
    ]


def test_failed_download_leaves_no_cache_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = tmp_path / "requirements.txt"
    pins.write_text(PINS)

    def failing(argv: Sequence[str], cwd: Path | None = None) -> str:
        raise requirements.RequirementsError("no network")

    monkeypatch.setattr(requirements, "_run", failing)
    with pytest.raises(requirements.RequirementsError):
        requirements.cached_wheels(pins, AMD64, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "wheels" / "amd64").iterdir())


def test_failing_tool_reports_stderr() -> None:
    with pytest.raises(requirements.RequirementsError, match="failed"):
        requirements._run(["git", "definitely-not-a-command"])


def test_hashed_project_requirements(tmp_path: Path) -> None:
    wheel = tmp_path / "imdb_model-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"project wheel")
    digest = hashlib.sha256(b"project wheel").hexdigest()
    assert requirements.hashed_requirements([wheel]) == (
        f"imdb-model==0.1.0 --hash=sha256:{digest}\n"
    )


def test_project_wheels_are_built(repo_root: Path, tmp_path: Path) -> None:
    wheels = requirements.build_project_wheels(repo_root, ["imdb-model"], tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["imdb_model"]
