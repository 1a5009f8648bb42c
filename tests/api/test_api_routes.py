"""The routes through the ASGI app: answers, schemas, request ids, metrics, both code paths."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import Histogram

from imdb_api.app import Api, ApiError, create_app
from imdb_api.metrics import RATING_BUCKETS, Metrics
from imdb_api.model_state import ModelState
from imdb_api.settings import Settings
from imdb_model import verify_artifact

from .conftest import MOVIE, make_api


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi-routing"])
def any_client(request: pytest.FixtureRequest, artifact: Path) -> Iterator[TestClient]:
    """A client of the app with and without the fast path: both must behave the same."""
    with TestClient(make_api(artifact, fast_path=request.param, max_batch=50)) as test_client:
        yield test_client


def test_predict_returns_the_models_rating_and_version(
    any_client: TestClient, artifact: Path
) -> None:
    loaded = verify_artifact(artifact)
    response = any_client.post("/predict", json=MOVIE)
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "averageRating": loaded.predictor().predict_one(MOVIE),
        "modelVersion": loaded.version,
    }
    assert 1.0 <= body["averageRating"] <= 10.0


def test_predict_accepts_nulls_and_absent_fields(any_client: TestClient) -> None:
    nulls = dict.fromkeys(MOVIE) | {"primaryTitle": "Untitled"}
    assert any_client.post("/predict", json=nulls).status_code == 200
    assert any_client.post("/predict", json={"primaryTitle": "Untitled"}).status_code == 200
    integral_float = MOVIE | {"startYear": 1994.0, "genres": []}
    assert any_client.post("/predict", json=integral_float).status_code == 200


def test_batch_keeps_order_and_matches_single_predictions(any_client: TestClient) -> None:
    movies = [MOVIE | {"startYear": 1950 + i, "runtimeMinutes": 60 + i} for i in range(20)]
    movies[3] = {"primaryTitle": "No facts at all"}
    response = any_client.post("/predict/batch", json={"movies": movies})
    assert response.status_code == 200
    ratings = response.json()["averageRatings"]
    singles = [any_client.post("/predict", json=m).json()["averageRating"] for m in movies]
    assert ratings == singles
    empty = any_client.post("/predict/batch", json={"movies": []})
    assert empty.status_code == 200
    assert empty.json()["averageRatings"] == []


def test_batch_over_the_limit_is_413(any_client: TestClient) -> None:
    response = any_client.post("/predict/batch", json={"movies": [MOVIE] * 51})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "limit is 50" in response.json()["detail"]


def test_health_ready_and_model_info(any_client: TestClient, artifact: Path) -> None:
    manifest = verify_artifact(artifact).manifest
    assert any_client.get("/health").json() == {"status": "ok"}
    ready = any_client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "status": "ready",
        "modelVersion": manifest["version"],
        "reasons": [],
    }
    info = any_client.get("/model/info").json()
    assert info["version"] == manifest["version"]
    assert info["features"] == manifest["features"]
    assert info["manifest_sha256"] == manifest["manifest_sha256"]
    # Private parts stay private: local data paths, git state, hashes, golden examples.
    assert not {"data", "git", "files", "golden", "libraries"} & info.keys()


def test_request_id_is_echoed_or_generated(any_client: TestClient) -> None:
    given = any_client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = any_client.post("/predict", json=MOVIE)
    assert len(generated.headers["x-request-id"]) == 16
    unsafe = any_client.get("/health", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert unsafe.headers["x-request-id"] != "a b\tc" + "x" * 200
    error = any_client.post("/predict", json={}, headers={"X-Request-ID": "req-9"})
    assert error.json()["requestId"] == "req-9"


def test_unknown_route_and_method_are_json_errors(any_client: TestClient) -> None:
    missing = any_client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = any_client.get("/predict")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"] == "method_not_allowed"


def test_openapi_documents_every_route_with_the_models_schema(
    any_client: TestClient, artifact: Path
) -> None:
    document = any_client.get("/openapi.json").json()
    schema = verify_artifact(artifact).schema
    expected = {
        "/predict": {"post"},
        "/predict/batch": {"post"},
        "/health": {"get"},
        "/ready": {"get"},
        "/model/info": {"get"},
        "/metrics": {"get"},
    }
    assert {path: set(ops) for path, ops in document["paths"].items()} == expected
    for status in ("200", "400", "413", "415", "422", "503"):
        assert status in document["paths"]["/predict"]["post"]["responses"]
    movie = document["components"]["schemas"]["Movie"]
    genres = movie["properties"]["genres"]["anyOf"][0]["items"]["enum"]
    assert genres == list(schema.genres)
    year = movie["properties"]["startYear"]["anyOf"][0]
    assert (year["minimum"], year["maximum"]) == schema.start_year_range
    batch = document["components"]["schemas"]["MovieBatch"]
    assert batch["properties"]["movies"]["maxItems"] == 50
    assert any_client.get("/openapi.json").json() == document  # cached once ready


def test_noop_is_there_only_when_enabled(client: TestClient, artifact: Path) -> None:
    for path in ("/noop", "/noop/fastapi"):
        assert client.post(path, json=MOVIE).json() == {"ok": True}
        with TestClient(make_api(artifact)) as plain:
            assert plain.post(path, json=MOVIE).status_code == 404


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        metric_name, _, rest = series.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric_name == name and found == wanted:
            return float(value)
    return 0.0


def test_metrics_count_requests_predictions_ratings_and_errors(artifact: Path) -> None:
    with TestClient(make_api(artifact)) as fresh:
        rating = fresh.post("/predict", json=MOVIE).json()["averageRating"]
        batch = fresh.post("/predict/batch", json={"movies": [MOVIE] * 4})
        assert batch.status_code == 200
        fresh.post("/predict", json={"primaryTitle": 3})
        fresh.get("/does-not-exist")
        text = fresh.get("/metrics").text
    labels = {"route": "/predict", "method": "POST", "status": "200"}
    assert metric(text, "imdb_api_requests_total", **labels) == 1
    assert metric(text, "imdb_api_request_duration_seconds_count", **labels) == 1
    assert metric(text, "imdb_api_predictions_total", endpoint="/predict") == 1
    assert metric(text, "imdb_api_predictions_total", endpoint="/predict/batch") == 4
    assert metric(text, "imdb_api_predicted_rating_count") == 5
    assert metric(text, "imdb_api_predicted_rating_sum") == pytest.approx(5 * rating, rel=1e-6)
    bucket = next(b for b in RATING_BUCKETS if rating <= b)
    assert metric(text, "imdb_api_predicted_rating_bucket", le=str(bucket)) == 5
    assert metric(text, "imdb_api_errors_total", route="/predict", kind="validation_error") == 1
    assert metric(text, "imdb_api_errors_total", route="unmatched", kind="not_found") == 1
    assert metric(text, "imdb_api_ready") == 1
    version = verify_artifact(artifact).version
    assert (
        f'imdb_api_model_info{{model_name="imdb-average-rating",version="{version}"}} 1.0' in text
    )


def test_batch_histogram_matches_observing_one_by_one(api: Api) -> None:
    """The vectorised histogram update gives what prometheus_client's observe() would."""
    ratings = np.array([1.0, 1.2, 5.5, 5.50001, 9.99, 10.0, 7.25], dtype=np.float32)
    reference = Histogram("reference", "reference", buckets=RATING_BUCKETS, registry=None)
    before = [b.get() for b in api.metrics.ratings._buckets]
    sum_before = api.metrics.ratings._sum.get()
    api.metrics.observe_batch(ratings)
    for value in ratings:
        reference.observe(float(value))
    after = [b.get() - b0 for b, b0 in zip(api.metrics.ratings._buckets, before, strict=True)]
    assert after == [b.get() for b in reference._buckets]
    added = api.metrics.ratings._sum.get() - sum_before
    assert added == pytest.approx(reference._sum.get())


def test_access_log_is_json_with_the_request_id(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        TestClient(make_api(artifact, access_log=True)) as logged,
        caplog.at_level(logging.INFO, logger="imdb_api.access"),
    ):
        logged.get("/health", headers={"X-Request-ID": "trace-1"})
    record = next(r for r in caplog.records if r.name == "imdb_api.access")
    assert record.__dict__["status"] == 200
    assert record.__dict__["path"] == "/health"


def test_a_bug_is_a_json_500_and_logged(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = make_api(artifact)

    def explode(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("boom")

    assert broken.state.predictor is not None
    monkeypatch.setattr(broken.state.predictor, "predict_one", explode)
    with TestClient(broken, raise_server_exceptions=False) as test_client:
        response = test_client.post("/predict", json=MOVIE)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "boom" in caplog.text


def test_api_error_reply_without_request_context() -> None:
    reply = ApiError("not_ready", "later").reply()
    assert reply.status == 503
    assert orjson.loads(reply.body) == {"error": "not_ready", "detail": "later"}
    assert (b"retry-after", b"5") in reply.headers


def test_create_app_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMDB_API_MAX_BATCH", "7")
    assert create_app().settings.max_batch == 7
    assert create_app(Settings(max_batch=3)).settings.max_batch == 3


def test_single_predictions_fill_the_rating_histogram_like_observe() -> None:
    """observe_prediction's bucket search gives what prometheus_client's observe() would."""
    metrics = Metrics(ModelState(None))
    reference = Histogram("reference_single", "", buckets=RATING_BUCKETS, registry=None)
    for value in [1.0, 1.2, 1.5, 5.5, 5.50001, 9.99, 10.0, 7.25, 11.0, 0.5]:
        metrics.observe_prediction(value)
        reference.observe(value)
    assert [b.get() for b in metrics.ratings._buckets] == [b.get() for b in reference._buckets]
    assert metrics.ratings._sum.get() == reference._sum.get()
    assert metrics._predict_one._value.get() == 10
    metrics.observe_prediction(math.nan)
    reference.observe(math.nan)
    assert [b.get() for b in metrics.ratings._buckets] == [b.get() for b in reference._buckets]
    assert math.isnan(metrics.ratings._sum.get())
