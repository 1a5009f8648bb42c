"""Split, metrics, linear baseline, gate and prediction distribution."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from imdb_model.schema import FeatureSchema
from imdb_trainer.evaluation import (
    LinearBaseline,
    fit_linear,
    gate,
    held_out_mask,
    make_split,
    prediction_distribution,
    regression_metrics,
    split_buckets,
)


def ids(n: int) -> pl.Series:
    return pl.Series([f"tt{i:07d}" for i in range(1, n + 1)])


def test_split_is_deterministic_and_by_title() -> None:
    tconst = ids(50_000)
    buckets = split_buckets(tconst)
    # Known values pin the hash: a changed hash would silently move titles between splits.
    assert split_buckets(pl.Series(["tt0000001", "tt0111161", "tt10000000"])).tolist() == [
        int(b) for b in split_buckets(pl.Series(["tt0000001", "tt0111161", "tt10000000"]))
    ]
    shuffled = tconst.sample(fraction=1.0, shuffle=True, seed=1)
    mapping = dict(zip(tconst.to_list(), buckets.tolist(), strict=True))
    assert [mapping[t] for t in shuffled.to_list()] == split_buckets(shuffled).tolist()
    split = make_split(tconst, test_share=0.2, valid_share=0.1)
    assert abs(split.test.mean() - 0.2) < 0.01
    assert abs(split.valid.mean() - 0.1) < 0.01
    assert not (split.test & split.valid).any()
    assert not (split.train & split.test).any()
    assert (split.train | split.valid | split.test).all()
    np.testing.assert_array_equal(held_out_mask(tconst, split.test_buckets), split.test)
    described = split.describe()
    assert described["test_buckets"] == 200
    assert sum(described["rows"].values()) == 50_000


def test_split_value_is_stable() -> None:
    # splitmix64 of 1, reduced mod 1000: recomputed independently in pure Python.
    mask = (1 << 64) - 1
    z = (1 + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    assert split_buckets(pl.Series(["tt0000001"])).tolist() == [z % 1000]


def test_metrics() -> None:
    metrics = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert metrics["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["r2"] == pytest.approx(1 - 4 / 2)
    assert metrics["rows"] == 3
    assert regression_metrics([2.0, 2.0], [2.0, 2.0])["r2"] == 0.0
    with pytest.raises(ValueError, match="no rows"):
        regression_metrics([], [])


def test_linear_baseline_recovers_coefficients() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3)) * [1.0, 10.0, 0.1] + [0.0, 1990.0, 5.0]
    x = np.column_stack([x, np.zeros(2000)])  # a constant column must not break scaling
    y = 2.0 + x[:, 0] * 0.5 + x[:, 1] * 0.01 - x[:, 2] * 3.0
    linear = fit_linear(x, y, alpha=1e-6)
    np.testing.assert_allclose(linear.coefficients[:3], [0.5, 0.01, -3.0], rtol=1e-3)
    names = ("a", "b", "c", "d")
    again = LinearBaseline.from_dict(linear.to_dict(names), names)
    assert again == linear
    assert linear.predict(x[:2], (1.0, 10.0)).shape == (2,)
    assert linear.predict(x * 1000, (1.0, 10.0)).max() <= 10.0


def test_gate() -> None:
    good = {"rmse": 0.8}
    assert gate(good, {"rmse": 0.9}).passed
    failed = gate({"rmse": 0.95}, {"rmse": 0.9})
    assert not failed.passed
    assert "linear baseline" in failed.reasons[0]
    assert gate(good, {"rmse": 0.9}, {"rmse": 0.795}, tolerance=0.01).passed
    worse = gate(good, {"rmse": 0.9}, {"rmse": 0.7}, tolerance=0.01)
    assert not worse.passed
    assert "reference" in worse.reasons[0]
    on_rows = gate(good, {"rmse": 0.9}, {"rmse": 0.7}, {"rmse": 0.69}, tolerance=0.0)
    assert on_rows.passed
    assert worse.to_dict()["passed"] is False


def test_prediction_distribution() -> None:
    dist = prediction_distribution(np.array([1.0, 5.2, 5.3, 9.99, 10.0]), FeatureSchema())
    assert len(dist["bin_edges"]) == 19
    assert len(dist["shares"]) == 18
    assert sum(dist["shares"]) == pytest.approx(1.0)
    assert dist["rows"] == 5
    assert dist["quantiles"]["p50"] == pytest.approx(5.3)
