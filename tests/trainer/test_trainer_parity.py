"""Trainer-side (columnar) and API-side (dicts) paths give identical predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imdb_model import Predictor, load_predictor, transform_columns, transform_records
from imdb_trainer.ingest import ingest
from imdb_trainer.train import TrainOptions, frame_columns, frame_records, train


def test_columnar_and_record_paths_agree(trained: Path, generated: Path) -> None:
    predictor = load_predictor(trained)
    frame = ingest(generated, predictor.schema.title_types).frame
    columns = frame_columns(frame)
    records = frame_records(frame)
    np.testing.assert_array_equal(
        transform_columns(columns, predictor.schema), transform_records(records, predictor.schema)
    )
    batch = predictor.predict_columns(columns)
    np.testing.assert_array_equal(batch, predictor.predict_records(records))
    singles = np.array([predictor.predict_one(r) for r in records[:300]], dtype=np.float32)
    np.testing.assert_array_equal(batch[:300], singles)
    # JSON-style inputs (genres as a list, numbers as Python ints) give the same answer.
    record = dict(records[0])
    api_style = {
        **record,
        "genres": None if record["genres"] is None else record["genres"].split(","),
    }
    assert predictor.predict_one(api_style) == predictor.predict_one(record)


def test_several_title_types(generated: Path, tmp_path: Path) -> None:
    options = TrainOptions(
        data_dir=generated,
        out=tmp_path / "types",
        title_types=("movie", "tvMovie"),
        report=False,
        num_rounds=40,
        threads=1,
    )
    outcome = train(options)
    assert outcome.published == options.out
    predictor = load_predictor(options.out)
    assert predictor.schema.feature_names[-2:] == ("type_movie", "type_tvMovie")
    frame = ingest(generated, predictor.schema.title_types).frame
    assert set(frame["titleType"].unique()) == {"movie", "tvMovie"}
    np.testing.assert_array_equal(
        predictor.predict_columns(frame_columns(frame)),
        predictor.predict_records(frame_records(frame)),
    )


def test_an_onnx_export_that_drifts_from_the_booster_fails_training(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity guard, made to fail: an export whose answers differ from the booster's by
    more than the tolerance publishes nothing."""
    honest = Predictor.predict_matrix

    def drifted(self: Predictor, matrix: np.ndarray) -> np.ndarray:
        answers: np.ndarray = honest(self, matrix)
        shifted: np.ndarray = answers + np.float32(0.05)
        return shifted

    monkeypatch.setattr(Predictor, "predict_matrix", drifted)
    options = TrainOptions(
        data_dir=generated, out=tmp_path / "drift", report=False, num_rounds=20, threads=1
    )
    with pytest.raises(RuntimeError, match=r"the ONNX export differs from the booster by 0\.05"):
        train(options)
    assert not options.out.exists()
