"""Missing, incomplete or tampered artifacts: the service lives but never gets ready or predicts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import imdb_api.model_state as module
from imdb_api.app import Api
from imdb_api.model_state import ModelState, Status
from imdb_api.settings import Settings

from .conftest import MOVIE, make_api


def delete_model(path: Path) -> str:
    (path / "model.onnx").unlink()
    return "missing file model.onnx"


def flip_a_byte(path: Path) -> str:
    model = path / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    return "model.onnx was modified"


def edit_manifest(path: Path) -> str:
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["features"]["valid_ranges"]["startYear"] = [1800, 2100]
    manifest_path.write_text(json.dumps(manifest))
    return "manifest.json was modified"


def delete_manifest(path: Path) -> str:
    (path / "manifest.json").unlink()
    return "manifest.json is missing"


def add_a_file(path: Path) -> str:
    (path / "extra.bin").write_bytes(b"x")
    return "unexpected file extra.bin"


def remove_directory(path: Path) -> str:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    return "not a directory"


@pytest.mark.parametrize(
    "damage",
    [delete_model, flip_a_byte, edit_manifest, delete_manifest, add_a_file, remove_directory],
)
def test_a_damaged_artifact_never_gets_ready(
    artifact_copy: Path, damage: Callable[[Path], str], caplog: pytest.LogCaptureFixture
) -> None:
    reason = damage(artifact_copy)
    with caplog.at_level(logging.ERROR, logger="imdb_api.model"):
        api = make_api(artifact_copy)
    assert api.state.status is Status.FAILED
    assert any(reason in str(r.__dict__.get("problems")) for r in caplog.records)
    assert_unready(api, reason)


def assert_unready(api: Api, reason: str) -> None:
    with TestClient(api) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert any(reason in r for r in ready.json()["reasons"]), ready.json()
        for path, body in (("/predict", MOVIE), ("/predict/batch", {"movies": [MOVIE]})):
            response = client.post(path, json=body)
            assert response.status_code == 503
            assert response.json()["error"] == "not_ready"
            assert reason in response.json()["detail"]
            assert response.headers["retry-after"] == "5"
        assert client.get("/model/info").status_code == 503
        assert "imdb_api_ready 0.0" in client.get("/metrics").text
        # The request schemas fall back to the code's defaults and are documented all the same.
        assert "Movie" in client.get("/openapi.json").json()["components"]["schemas"]


def test_no_artifact_configured() -> None:
    api = make_api(None)
    assert api.state.status is Status.NOT_CONFIGURED
    assert_unready(api, "no artifact configured")


def test_a_golden_mismatch_of_the_serving_predictor_fails(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "check_golden", lambda predictor, golden: ["golden example 0: off"])
    api = make_api(artifact)
    assert api.state.reasons == ["golden example 0: off"]


def test_an_unexpected_loading_error_also_fails(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> None:
        raise MemoryError("no memory")

    monkeypatch.setattr(module, "verify_artifact", broken)
    state = ModelState(artifact)
    state.load()
    assert state.status is Status.FAILED
    assert "no memory" in state.reasons[0]


def test_loading_happens_in_the_background_while_health_answers(artifact: Path) -> None:
    api = Api(Settings(artifact=artifact, access_log=False))
    assert api.state.status is Status.LOADING
    with TestClient(api) as client:
        assert client.get("/health").status_code == 200
        assert api.state.wait(30)
        assert client.get("/ready").status_code == 200
        assert client.post("/predict", json=MOVIE).status_code == 200


# ---- the release record a release image carries (/opt/release.json) ---------------------------


def release_record(artifact: Path, **model: str) -> dict[str, object]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {
        "release": f"{manifest['version']}-t0123456789ab", "commit": "c" * 40,
        "tree": "0123456789ab" * 3, "dirty": False, "created": "2026-12-03T00:00:00Z",
        "source": "https://example.org/x",
        "model": {"version": manifest["version"], "manifest_sha256": manifest["manifest_sha256"],
                  "data_fingerprint": "f" * 64, "metrics": {}, **model},
    }  # fmt: skip


def test_model_info_shows_the_release_the_image_was_built_as(
    artifact: Path, tmp_path: Path
) -> None:
    record = release_record(artifact)
    path = tmp_path / "release.json"
    path.write_text(json.dumps(record))
    api = make_api(artifact, release_file=path)
    with TestClient(api) as client:
        info = client.get("/model/info").json()
    assert info["release"] == record
    assert info["version"] == record["model"]["version"]  # type: ignore[index]


def test_without_a_release_record_model_info_says_none(client: TestClient) -> None:
    assert client.get("/model/info").json()["release"] is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "is unreadable"),  # the file is missing
        ("not json", "is unreadable"),
        ('{"release": "x"}', "is unreadable"),
        ("other-model", "names model manifest"),  # a mislabelled image: another model's record
    ],
)
def test_a_release_record_of_another_model_never_gets_ready(
    artifact: Path, tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "release.json"
    if content == "other-model":
        path.write_text(json.dumps(release_record(artifact, manifest_sha256="0" * 64)))
    elif content is not None:
        path.write_text(content)
    api = make_api(artifact, release_file=path)
    assert api.state.status is Status.FAILED
    assert_unready(api, reason)
