"""The LightGBM -> ONNX converter routes every row like the booster."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest

from imdb_trainer.onnx_export import ConversionError, booster_to_onnx, float32_at_most


def session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_float32_at_most() -> None:
    for value in (0.1, 1.0000000180025095e-35, 1994.5, -3.3, 1e300, 7.0):
        rounded = float32_at_most(value)
        assert rounded <= value
        assert float(np.float32(rounded)) == rounded
        if rounded < float(np.finfo(np.float32).max):
            assert float(np.nextafter(np.float32(rounded), np.float32(np.inf))) > value


def test_matches_booster_on_awkward_thresholds() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 6)).astype(np.float32)  # thresholds fall between float32 values
    x[:, 5] = rng.integers(0, 2, 4000)
    y = x[:, 0] * 2 + np.sin(x[:, 1] * 3) + x[:, 5] + rng.normal(0, 0.1, 4000)
    booster = lgb.train(
        {"objective": "regression", "num_leaves": 15, "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, y),
        num_boost_round=60,
    )
    model = booster_to_onnx(booster, 6, [f"f{i}" for i in range(6)])
    got = session(model).run(None, {"features": x})[0].reshape(-1)
    np.testing.assert_allclose(got, booster.predict(x), atol=1e-5)


def test_single_leaf_trees() -> None:
    x = np.zeros((50, 2), dtype=np.float32)
    booster = lgb.train(
        {"objective": "regression", "verbosity": -1, "min_data_in_leaf": 100},
        lgb.Dataset(x, np.full(50, 3.0)),
        num_boost_round=2,
    )
    got = session(booster_to_onnx(booster, 2, ["a", "b"])).run(None, {"features": x})[0]
    np.testing.assert_allclose(got.reshape(-1), booster.predict(x), atol=1e-6)


def test_unsupported_boosters() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(500, 2)).astype(np.float64)
    y = (x[:, 0] == 3) * 1.0 + rng.normal(0, 0.1, 500)
    categorical = lgb.train(
        {"objective": "regression", "verbosity": -1, "min_data_per_group": 5, "cat_smooth": 1},
        lgb.Dataset(x, y, categorical_feature=[0]),
        num_boost_round=5,
    )
    with pytest.raises(ConversionError, match="decision type"):
        booster_to_onnx(categorical, 2, ["a", "b"])
    binary = lgb.train(
        {"objective": "binary", "verbosity": -1}, lgb.Dataset(x, y > 0.5), num_boost_round=2
    )
    with pytest.raises(ConversionError, match="objective"):
        booster_to_onnx(binary, 2, ["a", "b"])
    forest = lgb.train(
        {
            "objective": "regression",
            "boosting": "rf",
            "bagging_fraction": 0.5,
            "bagging_freq": 1,
            "verbosity": -1,
        },
        lgb.Dataset(x, y),
        num_boost_round=2,
    )
    with pytest.raises(ConversionError, match="average_output"):
        booster_to_onnx(forest, 2, ["a", "b"])
    zero = lgb.train(
        {"objective": "regression", "verbosity": -1, "zero_as_missing": True},
        lgb.Dataset(x, y),
        num_boost_round=2,
    )
    with pytest.raises(ConversionError, match="zero_as_missing"):
        booster_to_onnx(zero, 2, ["a", "b"])
