"""Deploy markers: their exposition, the Pushgateway and Grafana calls, and failure handling."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from imdb_deploy.monitoring.cli import main
from imdb_deploy.monitoring.markers import (
    DeployMarker,
    MarkerReport,
    MarkerSettings,
    TrainingReference,
    group_url,
    marker_exposition,
    record_deploy,
    reference_exposition,
)
from imdb_deploy.outbound import GRACE_S, Secret
from tests.support import free_port

from .conftest import RecordingServer

TOKEN = "glsa_secret-token-value"
DISTRIBUTION: dict[str, Any] = {
    "source": "model predictions on the held-out test split",
    "rows": 305,
    "bin_edges": [1.0 + 0.5 * i for i in range(19)],
    "shares": [1 / 18] * 18,
    "mean": 6.138,
    "std": 0.7308,
    "quantiles": {"p01": 4.49, "p05": 4.98, "p25": 5.68, "p50": 6.12, "p75": 6.59, "p95": 7.29},
}
MANIFEST: dict[str, Any] = {
    "version": "20251126.150329-22a474db",
    "prediction_distribution": DISTRIBUTION,
}


def _marker(result: str = "ok", **overrides: Any) -> DeployMarker:
    values: dict[str, Any] = {
        "environment": "staging",
        "version": MANIFEST["version"],
        "result": result,
        "action": "deploy",
        "timestamp": 1764170000.25,
    } | overrides
    return DeployMarker(**values)


def test_marker_exposition() -> None:
    labels = 'version="20251126.150329-22a474db",action="deploy",result="failed"'
    assert marker_exposition(_marker("failed")) == (
        "# HELP imdb_deploy_last_timestamp_seconds Unix time of the environment's last deploy "
        "action, labelled with its outcome.\n"
        "# TYPE imdb_deploy_last_timestamp_seconds gauge\n"
        f"imdb_deploy_last_timestamp_seconds{{{labels}}} 1764170000.25\n"
        "# HELP imdb_deploy_result 1 when the environment's last deploy action succeeded, 0 when "
        "it failed or rolled back.\n"
        "# TYPE imdb_deploy_result gauge\n"
        f"imdb_deploy_result{{{labels}}} 0.0\n"
    )


def test_marker_result_is_one_only_when_ok() -> None:
    assert 'result="ok"} 1.0' in marker_exposition(_marker("ok"))
    assert 'result="rolled_back"} 0.0' in marker_exposition(_marker("rolled_back"))


def test_label_values_are_escaped() -> None:
    text = marker_exposition(_marker(version='v"1\\\n'))
    assert 'version="v\\"1\\\\\\n"' in text


def test_training_reference_from_the_manifest() -> None:
    reference = TrainingReference.from_manifest(MANIFEST)
    assert reference.version == MANIFEST["version"]
    assert reference.mean == pytest.approx(6.138)
    assert reference.quantiles[0] == (0.01, 4.49)
    assert (0.25, 5.68) in reference.quantiles
    text = reference_exposition(reference)
    assert "imdb_model_training_rating_mean 6.138\n" in text
    assert "imdb_model_training_rating_std 0.7308\n" in text
    assert 'imdb_model_training_rating_quantile{quantile="0.25"} 5.68\n' in text
    assert 'imdb_model_training_rating_quantile{quantile="0.75"} 6.59\n' in text
    assert "imdb_model_training_rows 305.0\n" in text


@pytest.mark.parametrize(
    "manifest",
    [
        {"version": "v1"},
        {"version": "v1", "prediction_distribution": {}},
        {"version": "v1", "prediction_distribution": DISTRIBUTION | {"quantiles": {"median": 1}}},
        {"version": "v1", "prediction_distribution": DISTRIBUTION | {"mean": float("nan")}},
    ],
)
def test_unusable_manifests_are_refused(manifest: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="prediction_distribution"):
        TrainingReference.from_manifest(manifest)


def test_group_urls() -> None:
    assert (
        group_url("http://pg:9091/", "imdb_deploy", {"environment": "staging"})
        == "http://pg:9091/metrics/job/imdb_deploy/environment/staging"
    )
    # A value that is no plain path segment goes base64url-encoded, as the Pushgateway expects.
    encoded = base64.urlsafe_b64encode(b"a/b").decode()
    assert group_url("http://pg", "j", {"version": "a/b"}).endswith(f"/version@base64/{encoded}")
    assert group_url("http://pg", "j", {"version": ""}).endswith("/version@base64/=")
    assert group_url("http://pg", "j", {"version": ".."}).endswith("/version@base64/Li4=")


@pytest.mark.parametrize(
    "overrides",
    [{"result": "done"}, {"action": "redeploy"}, {"environment": ""}, {"version": ""}],
)
def test_markers_are_validated(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be one of|needs an environment"):
        _marker(**overrides)


def test_secret_never_shows() -> None:
    secret = Secret(TOKEN)
    settings = MarkerSettings(grafana_url="http://g", grafana_token=secret)
    assert TOKEN not in repr(secret) + str(secret) + f"{secret}" + repr(settings)
    assert secret.reveal() == TOKEN


def test_settings_from_the_environment() -> None:
    environ = {
        "MLOPS_PUSHGATEWAY_URL": "http://pg:9091",
        "MLOPS_GRAFANA_URL": " http://grafana:3000 ",
        "MLOPS_GRAFANA_TOKEN": TOKEN,
    }
    settings = MarkerSettings.from_environ(environ, timeout=1.0)
    assert settings.pushgateway == "http://pg:9091"
    assert settings.grafana_url == "http://grafana:3000"
    assert settings.grafana_token is not None
    assert settings.grafana_token.reveal() == TOKEN
    assert settings.timeout == 1.0
    # A flag wins over the variable; nothing set means nothing configured.
    assert MarkerSettings.from_environ(environ, pushgateway="http://x").pushgateway == "http://x"
    empty = MarkerSettings.from_environ({})
    assert (empty.pushgateway, empty.grafana_url, empty.grafana_token) == (None, None, None)


def test_push_to_the_pushgateway(recording_server: RecordingServer) -> None:
    settings = MarkerSettings(pushgateway=recording_server.url + "/", timeout=2.0)
    reference = TrainingReference.from_manifest(MANIFEST)

    report = record_deploy(_marker(), settings, reference)

    assert report.ok, report.describe()
    assert [d.destination for d in report.deliveries] == ["pushgateway", "pushgateway-reference"]
    by_path = {request.path: request for request in recording_server.requests}
    version = MANIFEST["version"]
    marker = by_path["/metrics/job/imdb_deploy/environment/staging"]
    # PUT replaces the whole group: it always holds the environment's last action only.
    assert marker.method == "PUT"
    assert marker.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert marker.body.decode() == marker_exposition(_marker())
    reference_request = by_path[
        f"/metrics/job/imdb_model_reference/environment/staging/version/{version}"
    ]
    assert reference_request.method == "PUT"
    assert reference_request.body.decode() == reference_exposition(reference)


def test_annotate_grafana(
    recording_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="imdb_deploy.monitoring")
    settings = MarkerSettings(
        grafana_url=recording_server.url, grafana_token=Secret(TOKEN), timeout=2.0
    )

    report = record_deploy(_marker("rolled_back", action="rollback"), settings)

    assert report.ok, report.describe()
    (request,) = recording_server.requests
    assert (request.method, request.path) == ("POST", "/api/annotations")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "time": 1764170000250,
        "tags": ["deploy", "staging", "rolled_back"],
        "text": f"rollback of {MANIFEST['version']} in staging: rolled_back",
    }
    assert "deploy marker sent to grafana" in caplog.text
    assert TOKEN not in caplog.text


def test_a_refusal_is_reported_with_the_token_scrubbed(
    recording_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A receiver that echoes the credential in its error must not get it into the log.
    recording_server.status = 401
    recording_server.reply = f'{{"message": "invalid API key {TOKEN}"}}'.encode()
    settings = MarkerSettings(
        grafana_url=recording_server.url, grafana_token=Secret(TOKEN), timeout=2.0
    )

    report = record_deploy(_marker(), settings)

    assert not report.ok
    (failure,) = report.failures
    assert failure.destination == "grafana"
    assert failure.error is not None
    assert failure.error.startswith("HTTP 401 Unauthorized: ")
    assert "invalid API key ***" in failure.error
    assert TOKEN not in caplog.text + report.describe()
    assert "deploy marker to grafana failed" in caplog.text


def test_a_hanging_receiver_times_out(recording_server: RecordingServer) -> None:
    recording_server.mode = "hang"
    settings = MarkerSettings(
        pushgateway=recording_server.url,
        grafana_url=recording_server.url,
        grafana_token=Secret(TOKEN),
        timeout=0.5,
    )

    start = time.monotonic()
    report = record_deploy(_marker(), settings)
    elapsed = time.monotonic() - start

    assert elapsed < 0.5 + GRACE_S + 0.5
    assert [(d.destination, d.ok) for d in report.deliveries] == [
        ("pushgateway", False),
        ("grafana", False),
    ]
    assert all(d.error == "timed out" for d in report.deliveries), report.describe()
    assert len(recording_server.requests) == 2  # both were sent, neither answered


def test_a_trickling_receiver_is_abandoned_at_the_deadline(
    recording_server: RecordingServer,
) -> None:
    # One byte every 0.2 s never trips a 0.5 s socket timeout: the overall deadline stops it.
    recording_server.mode = "trickle"
    settings = MarkerSettings(pushgateway=recording_server.url, timeout=0.5)

    start = time.monotonic()
    report = record_deploy(_marker(), settings)
    elapsed = time.monotonic() - start

    assert elapsed < 0.5 + GRACE_S + 0.5
    (failure,) = report.failures
    assert failure.error is not None
    assert failure.error.startswith("no answer within")


def test_unreachable_and_misconfigured_destinations() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = MarkerSettings(pushgateway=closed, grafana_url="file:///etc/passwd", timeout=1.0)

    report = record_deploy(_marker(), settings)

    errors = {d.destination: d.error or "" for d in report.deliveries}
    assert errors["pushgateway"].startswith("cannot reach it:")
    # No token: reported, and the URL is not even opened.
    assert errors["grafana"] == "MLOPS_GRAFANA_URL is set but MLOPS_GRAFANA_TOKEN is not"
    with_token = MarkerSettings(grafana_url="file:///etc/passwd", grafana_token=Secret(TOKEN))
    (failure,) = record_deploy(_marker(), with_token).failures
    assert failure.error == "not an http(s) URL: file:///etc/passwd/api/annotations"


def test_nothing_configured_is_an_empty_success() -> None:
    report = record_deploy(_marker(), MarkerSettings())
    assert report == MarkerReport(())
    assert report.ok
    assert report.describe() == "no marker destination configured"


def test_a_reference_of_another_version_is_a_bug() -> None:
    reference = TrainingReference.from_manifest(MANIFEST | {"version": "other"})
    with pytest.raises(ValueError, match="other"):
        record_deploy(_marker(), MarkerSettings(pushgateway="http://127.0.0.1:1"), reference)


# ---------------------------------------------------------------- the `marker` command


def test_marker_command(
    recording_server: RecordingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MLOPS_GRAFANA_URL", raising=False)
    monkeypatch.setenv("MLOPS_PUSHGATEWAY_URL", recording_server.url)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text(json.dumps(MANIFEST))
    version = MANIFEST["version"]
    args = ["marker", "--env", "prod", "--version", version, "--result", "failed"]

    assert main([*args, "--manifest", str(artifact)]) == 0

    assert capsys.readouterr().out.startswith(f"deploy of {version} to prod: failed\n")
    paths = sorted(request.path for request in recording_server.requests)
    assert paths == [
        "/metrics/job/imdb_deploy/environment/prod",
        f"/metrics/job/imdb_model_reference/environment/prod/version/{version}",
    ]


def test_marker_command_delivery_failures(
    recording_server: RecordingServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MLOPS_GRAFANA_URL", raising=False)
    recording_server.status = 400
    args = ["marker", "--env", "prod", "--version", "v1", "--result", "ok"]
    args += ["--action", "rollback", "--pushgateway", recording_server.url]

    # A monitoring failure must not fail a deploy: reported, exit 0, unless --strict.
    assert main(args) == 0
    assert "pushgateway: HTTP 400 Bad Request" in capsys.readouterr().err
    assert main([*args, "--strict"]) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no destination"),
        (["--pushgateway", "http://pg", "--manifest", "{manifest}"], "not v2"),
        (["--pushgateway", "http://pg", "--manifest", "{missing}"], "No such file"),
        (["--pushgateway", "http://pg", "--env", ""], "needs an environment"),
    ],
)
def test_marker_command_usage_errors(
    extra: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("MLOPS_PUSHGATEWAY_URL", "MLOPS_GRAFANA_URL", "MLOPS_GRAFANA_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    paths = {"manifest": str(manifest), "missing": str(tmp_path / "missing.json")}
    extra = [value.format(**paths) for value in extra]
    args = ["marker", "--env", "prod", "--version", "v2", "--result", "ok", *extra]

    assert main(args) == 2
    assert message in capsys.readouterr().err
