"""The API path and the trainer path give identical predictions for the same titles.

The trainer predicts columns built from its ingested frame (`transform_columns`); the API gets
the same rows as JSON, one by one and in batches, and runs its own validation and record path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from imdb_model import verify_artifact
from imdb_trainer.ingest import ingest
from imdb_trainer.train import frame_columns, frame_records

ROWS = 2000


def as_json(record: dict[str, Any]) -> dict[str, Any]:
    """A trainer record in the API's JSON types (boolean isAdult, genres as an array)."""
    body = {k: v for k, v in record.items() if v is not None}
    if "isAdult" in body:
        body["isAdult"] = bool(body["isAdult"])
    if "genres" in body:
        body["genres"] = body["genres"].split(",")
    return body


def test_http_predictions_equal_the_trainers(
    client: TestClient, api_data: Path, artifact: Path
) -> None:
    frame = ingest(api_data).frame.head(ROWS)
    expected = verify_artifact(artifact).predictor().predict_columns(frame_columns(frame))
    movies = [as_json(r) for r in frame_records(frame)]
    batched: list[float] = []
    for start in range(0, len(movies), 1000):
        response = client.post("/predict/batch", json={"movies": movies[start : start + 1000]})
        assert response.status_code == 200
        batched += response.json()["averageRatings"]
    assert np.array_equal(np.asarray(batched, dtype=np.float32), expected)
    singles = [client.post("/predict", json=m).json()["averageRating"] for m in movies[:200]]
    assert np.array_equal(np.asarray(singles, dtype=np.float32), expected[:200])
    # The float64 values on the wire are exactly the float32 predictions.
    assert batched[:200] == singles
